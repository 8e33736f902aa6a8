"""What ``parsetune tpu submit`` runs on the workers: any parsetune job, from the words after ``--``.

::

    parsetune tpu submit --config C                        parsetune train C --run_dir RUN_DIR
    parsetune tpu submit --config C -- --trainer.x 5       parsetune train C --run_dir RUN_DIR --trainer.x 5
    parsetune tpu submit --config C -- train --trainer.x 5 (the same, spelled out)
    parsetune tpu submit --config C -- run --quick         parsetune run C --run_dir RUN_DIR --quick
    parsetune tpu submit --config C -- export --checkpoint gs://.../step-79 --out gs://.../hf-79
    parsetune tpu submit --config C -- eval generate --model ... --data gs://... --out gs://...
    parsetune tpu submit --config C -- eval score PREDICTIONS.jsonl --out gs://...

``train`` and ``run`` take CONFIG (copied to every worker) and the run dir ``submit`` names (as the
explicit ``--run_dir`` override, so the job writes exactly where ``submit`` says); they run on every
worker of the slice, as one multi-host JAX job. ``export``, ``eval`` and ``prep`` take their arguments
unchanged; ``export`` and ``eval generate`` also run on every worker (each joins the slice's JAX pod:
the model is sharded over all hosts, process 0 writes), ``eval score|compare`` and ``prep`` on worker 0
(``--worker`` picks another, or ``all``).
"""

from __future__ import annotations

from dataclasses import dataclass

from parsetune.errors import UserError

CONFIG_COMMANDS = ("train", "run")  # parsetune COMMAND CONFIG [overrides]: the whole slice, one run dir
SINGLE_COMMANDS = ("export", "eval", "prep")  # one process, arguments as given
COMMANDS = CONFIG_COMMANDS + SINGLE_COMMANDS


@dataclass(frozen=True)
class JobSpec:
    command: str  # train | run | export | eval | prep
    args: tuple[str, ...] = ()  # after the command: overrides (train/run) or its own arguments

    @property
    def needs_config(self) -> bool:
        return self.command in CONFIG_COMMANDS

    @property
    def is_pod_job(self) -> bool:
        """Jobs that run JAX over the whole slice: on a multi-host TPU every worker must take part
        (``jax.distributed`` waits for all of them), so they run on all workers by default."""
        return self.needs_config or self.command == "export" or self.args[:1] == ("generate",)

    @property
    def default_worker(self) -> str:
        return "all" if self.is_pod_job else "0"

    def argv(self, parsetune: str, config: str | None = None, run_dir: str | None = None) -> list[str]:
        """The job's command line on a worker (``parsetune`` is the installed entry point)."""
        if not self.needs_config:
            return [parsetune, self.command, *self.args]
        assert config is not None
        return [parsetune, self.command, config, *(["--run_dir", run_dir] if run_dir else []), *self.args]

    def describe(self, config: str | None = None, run_dir: str | None = None) -> str:
        return " ".join(self.argv("parsetune", config or "CONFIG", run_dir))


def parse_job(words: list[str]) -> JobSpec:
    """The job from the words after ``--`` (none: ``train``; leading ``--key value`` words: train overrides)."""
    if words[:1] == ["--"]:
        words = words[1:]
    if not words or words[0].startswith("-"):
        command, args = "train", words
    else:
        command, args = words[0], words[1:]
    if command not in COMMANDS:
        raise UserError(f"unknown job {command!r} after --: use one of {', '.join(COMMANDS)} (or --key value overrides for train)")
    if command in CONFIG_COMMANDS:
        if args and not args[0].startswith("-"):
            raise UserError(f"{command} takes its config from tpu submit --config, got {args[0]!r} after `-- {command}`: "
                            "only --key value overrides may follow")  # fmt: skip
        if any(a == "--run_dir" or a.startswith("--run_dir=") for a in args):
            raise UserError("pass the run dir as `parsetune tpu submit --run-dir GS_URL` (or tpu.run_dir), not as a --run_dir override")
    if command == "eval" and not args:
        raise UserError("eval needs a subcommand after `-- eval`: generate, score or compare")
    return JobSpec(command, tuple(args))
