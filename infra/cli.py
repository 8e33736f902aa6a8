"""``parsetune tpu``: TPU VMs via gcloud — create, setup, submit, logs, status, stop, delete."""

from __future__ import annotations

import argparse
import functools
import sys

from infra import ops
from infra.jobs import parse_job
from infra.runner import Runner
from infra.settings import load_settings
from parsetune.errors import UserError

EPILOG = """\
examples (the tpu: section of CONFIG can hold name, zone, accelerator_type, ... instead of flags):
  parsetune tpu create --name viggo --zone us-central2-b --accelerator-type v4-32 --spot
  parsetune tpu setup  --name viggo --zone us-central2-b
  WANDB_API_KEY=... parsetune tpu submit --config configs/viggo/llama2_7b_lora_tpu.yaml --run-dir gs://BUCKET/runs/viggo
  parsetune tpu submit --config configs/viggo/llama2_7b_lora_tpu.yaml --max-restarts 3     # wait; recreate a preempted spot VM
  parsetune tpu submit --config configs/viggo/llama2_7b_lora_tpu.yaml -- export --checkpoint gs://BUCKET/runs/viggo/checkpoints/step-119 --out gs://BUCKET/runs/viggo/hf-119
  parsetune tpu logs   --config configs/viggo/llama2_7b_lora_tpu.yaml --follow
  parsetune tpu status --config configs/viggo/llama2_7b_lora_tpu.yaml
  parsetune tpu stop   --config configs/viggo/llama2_7b_lora_tpu.yaml
  parsetune tpu delete --config configs/viggo/llama2_7b_lora_tpu.yaml --yes
add --dry-run to any of them to print the gcloud commands without running anything."""


SUBMIT_DESCRIPTION = """\
Start a parsetune job on the TPU workers, detached (log: ~/parsetune/jobs/JOB.log on each worker).
Nothing is copied or started until every worker has parsetune installed and no job running.

  parsetune tpu submit --config C                             parsetune train C --run_dir RUN_DIR
  parsetune tpu submit --config C -- --trainer.num_train_steps 5   (train overrides, as before)
  parsetune tpu submit --config C -- run --eval.limit 200     parsetune run C --run_dir RUN_DIR ...
  parsetune tpu submit --config C -- export --checkpoint RUN_DIR/checkpoints/step-N --out RUN_DIR/hf-N
  parsetune tpu submit --config C -- eval generate --model DIR --data SPLIT.jsonl --out PREDICTIONS.jsonl

train and run get CONFIG (copied to every worker) and RUN_DIR (--run-dir, tpu.run_dir, or the config's
own gs:// run_dir) and run on all workers as one multi-host job: a TPU with more than one worker needs
a gs:// RUN_DIR. export, eval and prep take their arguments as given (--config then only says where
the TPU is); export and eval generate run on all workers (one JAX pod over the slice), eval score|compare
and prep on worker 0. --max-restarts N waits for the job and recovers from spot preemptions."""


def add_target_options(p: argparse.ArgumentParser, full: bool) -> None:
    g = p.add_argument_group("where (flags override the config's tpu: section)")
    g.add_argument("--config", metavar="CONFIG", help="training config (local or gs://); its tpu: section supplies defaults")
    g.add_argument("--name", help="TPU VM name (lowercase letters, digits, hyphens)")
    g.add_argument("--zone", help="GCP zone, e.g. us-central2-b (v4), europe-west4-a (v3), us-west4-a (v5e)")
    g.add_argument("--project", help="GCP project [gcloud's configured project]")
    g.add_argument("--queued", action=argparse.BooleanOptionalAction, default=None,
                   help="the TPU is a queued resource (gcloud compute tpus queued-resources)")
    g.add_argument("--accelerator-type", dest="accelerator_type",
                   help="v2-8, v3-8, v4-32, v5litepod-8, v5p-8, v6e-8, ... [v3-8]" if full else
                   "accelerator type (only used for the worker count of a --dry-run) [v3-8]")
    if full:
        g.add_argument("--runtime-version", dest="runtime_version",
                       help="TPU software version [tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite for v5e, ...]")
        g.add_argument("--spot", action=argparse.BooleanOptionalAction, default=None, help="Spot TPU (cheaper, can be reclaimed)")
        g.add_argument("--preemptible", action=argparse.BooleanOptionalAction, default=None, help="preemptible TPU (older flavour of Spot)")
    p.add_argument("--dry-run", action="store_true", help="print the gcloud commands (copy-pasteable) and run nothing")


def settings_from(args):
    keys = ("name", "zone", "project", "queued", "accelerator_type", "runtime_version", "spot", "preemptible",
            "source", "run_dir")  # fmt: skip
    overrides = {k: getattr(args, k, None) for k in keys}
    if getattr(args, "secret", None):
        overrides["secrets"] = args.secret
    return load_settings(args.config, overrides)


def runner_for(args) -> Runner:
    args.runner = Runner(dry_run=args.dry_run)  # kept: masked_errors masks an error with its secrets
    return args.runner


def masked_errors(func):
    """``func`` whose one-line error passes through the secret masker too: an error message may quote
    a worker's output (its last log line, gcloud's stderr), which may hold a secret."""

    @functools.wraps(func)
    def run(args) -> int:
        try:
            return func(args)
        except UserError as err:
            runner = getattr(args, "runner", None)
            masked = runner.secrets.mask(str(err)) if runner is not None else str(err)
            if masked == str(err):
                raise
            raise UserError(masked) from None  # the cause's text holds the secret: do not chain it

    return run


def run_create(args) -> int:
    return ops.create(runner_for(args), settings_from(args))


def run_setup(args) -> int:
    return ops.setup(runner_for(args), settings_from(args))


def run_submit(args) -> int:
    spec = parse_job(args.job_args)
    return ops.submit(
        runner_for(args), settings_from(args), args.config, spec, args.job, args.worker,
        watch=args.watch, max_restarts=args.max_restarts, poll=args.poll,
    )  # fmt: skip


def run_logs(args) -> int:
    return ops.logs(runner_for(args), settings_from(args), args.job, args.worker, args.lines, args.follow)


def run_status(args) -> int:
    return ops.status(runner_for(args), settings_from(args), args.job, args.lines)


def run_stop(args) -> int:
    return ops.stop(runner_for(args), settings_from(args), args.job, args.grace)


def run_delete(args) -> int:
    settings = settings_from(args)
    if not args.yes and not args.dry_run:
        if not sys.stdin.isatty():
            raise UserError(f"deleting TPU {settings.target.name} needs --yes when not run interactively")
        answer = input(f"Delete TPU {settings.target.name} in {settings.target.zone}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted")
            return 1
    return ops.delete(runner_for(args), settings)


def register(subparsers) -> None:
    tpu = subparsers.add_parser(
        "tpu",
        help="create TPU VMs and submit training jobs to them with gcloud",
        description="Run parsetune on Cloud TPU VMs through gcloud: create a TPU VM, install parsetune and "
        "jax[tpu] on every worker, start a job (`parsetune train CONFIG` on all workers by default; run, export, "
        "eval, prep) in the background, follow its logs, recover it from spot preemptions, stop it, delete the "
        "TPU. WANDB_API_KEY and HF_TOKEN from your environment reach the workers in a private env file, never "
        "on a command line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = tpu.add_subparsers(dest="tpu_command", metavar="{create,setup,submit,logs,status,stop,delete}", required=True)

    def add(name: str, help: str, func, full: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_target_options(p, full)
        p.set_defaults(func=masked_errors(func))
        return p

    add("create", "create a TPU VM (or a queued resource with --queued)", run_create, full=True)

    p = add("setup", "install Python 3.11, parsetune and jax[tpu]==0.7.2 (libtpu) on every worker", run_setup)
    p.add_argument("--source", help="what to install: 'local' (git archive of this checkout's HEAD), a .whl/.tar.gz "
                   "file, git+https://HOST/REPO@REF, or any pip requirement [local]")

    p = add("submit", "start a parsetune job (train by default; run, export, eval, prep) on the workers in the background",
            run_submit)
    p.description = SUBMIT_DESCRIPTION
    p.add_argument("--run-dir", dest="run_dir", metavar="GS_URL",
                   help="gs://bucket/prefix: train/run write here (passed as --run_dir; required on a multi-host TPU) "
                   "[tpu.run_dir, else the config's run_dir when it is gs://]")
    p.add_argument("--job", help="job name (log: ~/parsetune/jobs/JOB.log) [config name + UTC time]")
    p.add_argument("--worker", metavar="all|N", help="where the job runs [all for train/run/export/eval generate, 0 for eval score|compare and prep]")
    p.add_argument("--secret", action="append", metavar="ENV_NAME",
                   help="also send this local environment variable (besides WANDB_API_KEY, HF_TOKEN); repeatable")
    p.add_argument("--watch", action="store_true", help="stay: poll until the job ends; exit status 0 only if it succeeded")
    p.add_argument("--max-restarts", dest="max_restarts", type=int, default=0, metavar="N",
                   help="implies --watch: when the TPU is PREEMPTED/TERMINATED/gone, delete, create, setup and rerun "
                   "the job (it resumes from its gs:// checkpoints), at most N times [%(default)s]")
    p.add_argument("--poll", type=float, default=60.0, metavar="SECONDS", help="seconds between checks with --watch [%(default)s]")
    p.add_argument("job_args", nargs=argparse.REMAINDER, metavar="-- [COMMAND] ARGS",
                   help="after --: train overrides (--key value), or train|run|export|eval|prep and its arguments")

    for name, help, func in (
        ("logs", "print the job's log from every worker (or --worker N), or --follow it", run_logs),
        ("status", "TPU state, and on each worker whether the job runs or how it ended", run_status),
    ):
        p = add(name, help, func)
        p.add_argument("--job", help="job name [the last one submitted]")
        p.add_argument("--lines", type=int, default=50 if name == "logs" else 10, help="log lines to show [%(default)s]")
        if name == "logs":
            p.add_argument("--worker", type=int, metavar="N", help="only this worker [all]")
            p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines (Ctrl-C to stop)")

    p = add("stop", "stop the job on every worker (SIGTERM, then SIGKILL)", run_stop)
    p.add_argument("--job", help="job name [the last one submitted]")
    p.add_argument("--grace", type=int, default=30, help="seconds between SIGTERM and SIGKILL [%(default)s]")

    p = add("delete", "delete the TPU VM (or queued resource)", run_delete)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
