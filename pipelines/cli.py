"""``parsetune train`` and ``parsetune export``."""

from __future__ import annotations

import argparse

TRAIN_DESCRIPTION = """\
Fine-tune a model with Levanter's Trainer from one YAML config (full weights or LoRA).

Config sections (see configs/viggo/*.yaml; every key can be overridden as --section.key VALUE):
  model       HF checkpoint directory (local or gs://), e.g. models/smollm2-135m-instruct
  method      {type: lora, r, alpha, dropout, target_modules (regex)} or {type: full}
  data        train / validation prepared JSONL (parsetune prep), max_seq_len, packing, shuffle_seed
  epochs      number of passes over train (overrides trainer.num_train_steps)
  trainer     Levanter TrainerConfig: train_batch_size, num_train_steps, mp, model_axis_size,
              tensor_parallel_axes, checkpointer, steps_per_eval, require_accelerator, ...
  optimizer   Levanter AdamConfig: learning_rate, weight_decay, warmup, lr_schedule, ...
  run_dir     where everything goes (local or gs://):
                config.yaml, checkpoints/step-N, metrics.jsonl, hf/ (merged HF), adapter/ (LoRA)
  wandb_mode  offline (default; files under RUN_DIR/wandb), online, or disabled

Rerunning the same command resumes from the last checkpoint in RUN_DIR/checkpoints.

Several hosts: on a TPU slice every host runs the same command and JAX finds its peers itself.
Elsewhere set trainer.distributed.{coordinator_address,num_processes,process_id} (or the
PARSETUNE_COORDINATOR_ADDRESS / PARSETUNE_NUM_PROCESSES / PARSETUNE_PROCESS_ID environment
variables) on each host, or try a pod on this machine with --hosts N. Only process 0 writes
config.yaml, metrics.jsonl, W&B and the export; every host writes its own checkpoint shards.
"""


def take_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """``--name VALUE`` or ``--name=VALUE`` anywhere in ``argv`` (overrides follow the config, so
    argparse leaves them to us): its value and the rest of the arguments."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == name:
            if i + 1 >= len(argv):
                from parsetune.errors import UserError

                raise UserError(f"{name} needs a value")
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def run_train(args) -> int:
    from parsetune.errors import UserError
    from pipelines.train import ignored_sections, parse_config, train

    hosts, overrides = take_option(args.overrides, "--hosts")
    if args.hosts is not None or hosts is not None:
        try:
            count = int(hosts if hosts is not None else args.hosts)
        except ValueError:
            raise UserError(f"--hosts {hosts}: expected a number of processes") from None
        return run_train_pod(args.config, overrides, count)
    from parsetune.distributed import fail_fast

    config = parse_config(args.config, args.overrides)
    ignored = ignored_sections(args.config)
    if ignored:
        import sys

        names = ", ".join(f"{k}:" for k in ignored)
        print(f"[parsetune train] ignoring the {names} section{'s' if len(ignored) > 1 else ''} of {args.config} "
              "(used by `parsetune tpu` / `parsetune run`)", file=sys.stderr, flush=True)
    with fail_fast("train"):
        result = train(config)
    print(f"run dir: {result.run_dir}")
    print(f"steps: {result.steps}  final train loss: {result.final_train_loss}  final eval loss: {result.final_eval_loss}")
    if result.exported:
        print(f"merged HF checkpoint: {result.run_dir.rstrip('/')}/hf")
    return 0


def run_train_pod(config: str, overrides: list[str], hosts: int) -> int:
    import sys

    from parsetune.errors import UserError
    from parsetune.local_pod import PodStopped, pod_failure, run_local_pod
    from pipelines.train import parse_config

    parse_config(config, overrides)  # a bad config fails here once, not in every host
    print(f"[parsetune train] starting a simulated pod of {hosts} processes on 127.0.0.1", file=sys.stderr, flush=True)
    try:
        exits = run_local_pod([sys.executable, "-m", "parsetune", "train", config, *overrides], hosts)
    except PodStopped as stopped:
        print(f"parsetune train: {stopped}", file=sys.stderr)
        return stopped.exit_status
    failure = pod_failure(exits)
    if failure:
        raise UserError(failure)
    print(f"all {hosts} hosts finished")
    return 0


def run_export(args) -> int:
    from pipelines.checkpoint_export import export_checkpoint
    from parsetune.distributed import fail_fast

    with fail_fast("export"):  # a pod exports together: one failing host must not leave the others waiting
        completed = export_checkpoint(args.checkpoint, args.out, args.config, args.adapter_out)
    print(f"exported {args.checkpoint} ({completed} completed steps) to {args.out}" + (f" (adapter: {args.adapter_out})" if args.adapter_out else ""))
    return 0


QUICK_OVERRIDES = [
    "--epochs", "null", "--trainer.num_train_steps", "10", "--trainer.steps_per_eval", "10",
    "--data.max_eval_examples", "16", "--eval.limit", "32",
]


def run_run(args) -> int:
    from pipelines.run import run
    from pipelines.train import parse_config

    overrides = [o for o in args.overrides if o != "--quick"]
    args.quick = args.quick or len(overrides) != len(args.overrides)
    if args.quick:
        overrides = QUICK_OVERRIDES + overrides
    config = parse_config(args.config, overrides)
    if args.quick and "--run_dir" not in overrides:
        import dataclasses

        config = dataclasses.replace(config, run_dir=config.run_dir.rstrip("/") + "-quick")
    report = run(config)
    print(f"report: {report}")
    return 0


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="fine-tune with Levanter (full or LoRA) from a YAML config",
        description=TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  parsetune train configs/viggo/smollm2_lora_cpu.yaml\n"
        "  parsetune train configs/viggo/smollm2_lora_cpu.yaml --run_dir runs/try --trainer.num_train_steps 5\n"
        "  XLA_FLAGS=--xla_force_host_platform_device_count=3 parsetune train CONFIG --hosts 2 --trainer.model_axis_size 3",
    )
    train.add_argument("config", help="YAML config file (local or gs://)")
    train.add_argument(
        "--hosts", type=int, metavar="N",
        help="run as a simulated N-host pod on this machine: N cooperating JAX processes (coordinator on 127.0.0.1, "
        "gloo collectives), each with the devices XLA_FLAGS=--xla_force_host_platform_device_count=K gives it; "
        "logs prefixed [host i]; one failing host stops them all. May also follow the config.",
    )
    train.add_argument("overrides", nargs=argparse.REMAINDER, help="--dotted.key VALUE overrides")
    train.set_defaults(func=run_train)

    export = subparsers.add_parser(
        "export",
        help="export a training checkpoint as a merged HF checkpoint",
        description="Load RUN_DIR/checkpoints/step-N into the run's model (rebuilt from RUN_DIR/config.yaml) "
        "and write a merged HF checkpoint (LoRA folded in), with the base model's tokenizer, chat template, "
        "generation config and special token ids.",
    )
    export.add_argument("--checkpoint", required=True, help="a Levanter checkpoint directory: RUN_DIR/checkpoints/step-N")
    export.add_argument("--out", required=True, help="output directory for the HF checkpoint (local or gs://); prompt tuning: the PEFT prompt-tuning adapter")
    export.add_argument("--config", help="the run's config.yaml [RUN_DIR/config.yaml next to the checkpoints]")
    export.add_argument("--adapter-out", help="LoRA runs: also write the PEFT adapter here")
    export.set_defaults(func=run_export)

    run = subparsers.add_parser(
        "run",
        help="prep -> base model -> train -> export -> generate -> score -> report, from one config",
        description="The whole pipeline from one training config (its prep: and eval: sections say where "
        "the data and base model come from and how to evaluate). Everything lands in RUN_DIR: prep/, the "
        "training contract (checkpoints/, metrics.jsonl, hf/, adapter/), eval/<split>/ (predictions, "
        "metrics, confusion matrix) and report.md. Finished steps are skipped on rerun.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  parsetune run configs/viggo/smollm2_lora_cpu.yaml\n"
        "  parsetune run configs/viggo/smollm2_lora_cpu.yaml --quick          # ~2 min smoke run into RUN_DIR-quick\n"
        "  parsetune run configs/viggo/smollm2_full_cpu.yaml --eval.limit 200",
    )
    run.add_argument("config", help="YAML config (as for parsetune train)")
    run.add_argument("--quick", action="store_true", help="smoke run: 10 training steps, 32 eval rows, into RUN_DIR-quick")
    run.add_argument("overrides", nargs=argparse.REMAINDER, help="--dotted.key VALUE overrides")
    run.set_defaults(func=run_run)
