"""``parsetune tpu submit --watch / --max-restarts N``: wait for the job, and recover a lost spot VM.

Every ``--poll`` seconds: ``describe`` the TPU; when it is READY, probe the job on every worker. The job
is done when every worker exited 0 (or skipped a one-worker job). A TPU that is PREEMPTED, TERMINATED
or gone (NOT_FOUND) lost the job: up to N times, it is deleted (when it still exists), created again,
set up again, and the same job (same config bytes, command, run dir, secrets) starts again; a
train/run job resumes from the last checkpoint in its gs:// run dir. A job that fails on a READY TPU
(non-zero exit) is not restarted: it would fail again. Each restart is printed with its cause.

Why in ``submit`` and not a separate ``tpu watch``: a restart needs the job's whole spec, including the
secrets, which are never written down anywhere; only the ``submit`` process holds them.
"""

from __future__ import annotations

import datetime
import time

from infra import gcloud, ops
from infra.ops import Job
from infra.runner import Runner
from infra.settings import TpuSettings
from infra.target import TpuTarget
from parsetune.errors import UserError

LOST_STATES = ("PREEMPTED", "TERMINATED")
READY_TIMEOUT_S = 3600.0


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tpu_state(runner: Runner, t: TpuTarget) -> tuple[str, int]:
    """The TPU's state (``NOT_FOUND`` when it is gone) and its worker count, without echoing the command."""
    res = runner.run(gcloud.describe(t), what=f"describe TPU {t.name}", capture=True, check=False, show=False)
    if not res.ok:
        if "NOT_FOUND" in res.stderr:
            return "NOT_FOUND", t.hosts
        raise UserError(f"describe TPU {t.name} failed: {runner.secrets.mask(ops.error_line(res.stderr))}")
    info = ops.parse_describe(t, res.stdout)
    return info.get("state", "UNKNOWN"), len(info.get("networkEndpoints") or []) or t.hosts


def wait_for_job(runner: Runner, t: TpuTarget, job: str, poll: float) -> str | None:
    """Poll until the job is done (returns None) or the TPU lost it (returns the cause); raises on a job failure."""
    last = None
    while True:
        state, workers = tpu_state(runner, t)
        if state in LOST_STATES or state == "NOT_FOUND":
            return f"TPU {t.name} is {state}"
        if state == "READY":
            states = ops.probe_workers(runner, t, job, workers, lines=20, show=False)
            summary = ", ".join(f"worker {s.worker} {s.describe()}" for s in states)
            if summary != last:
                runner.step(f"{now()} job {job}: {summary}")
                last = summary
            if any(s.failed or s.state in ("none", "unknown", "stopped") for s in states):
                state, _ = tpu_state(runner, t)  # a VM being reclaimed takes its jobs down first
                if state in LOST_STATES or state == "NOT_FOUND":
                    return f"TPU {t.name} is {state}"
                ops.report_failures(runner, states, lines=20)
                bad = next(s for s in states if not s.done and s.state != "running")
                raise UserError(runner.secrets.mask(f"job {job} on worker {bad.worker}: {bad.describe()} (not restarted: only a lost TPU is)"))
            if all(s.done for s in states):
                return None
        elif state != last:
            runner.step(f"{now()} TPU {t.name} is {state}; waiting")
            last = state
        time.sleep(poll)


def wait_until_ready(runner: Runner, t: TpuTarget, poll: float) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        state, _ = tpu_state(runner, t)
        if state == "READY":
            return
        if state in LOST_STATES or time.monotonic() > deadline:
            raise UserError(f"TPU {t.name} did not become READY after being recreated (it is {state})")
        time.sleep(poll)


def recreate(runner: Runner, s: TpuSettings, poll: float) -> None:
    t = s.target
    state, _ = tpu_state(runner, t)
    if state != "NOT_FOUND":
        runner.step(f"deleting TPU {t.name} ({state})")
        runner.run(gcloud.delete(t), what=f"delete {t.name}")
    ops.create(runner, s)
    wait_until_ready(runner, t, poll)
    ops.setup(runner, s)


def watch_job(runner: Runner, s: TpuSettings, job: Job, max_restarts: int, poll: float) -> int:
    t = s.target
    if runner.dry_run:
        runner.step(f"then every {poll:g} s: describe {t.name} and probe job {job.name} on each worker until it ends; "
                    f"when the TPU is {', '.join(LOST_STATES)} or NOT_FOUND: delete, create, setup and start the job "
                    f"again (at most {max_restarts} times)")  # fmt: skip
        return 0
    runner.step(f"watching job {job.name} every {poll:g} s" + (f" (at most {max_restarts} restarts after a preemption)" if max_restarts else ""))
    restarts = 0
    while True:
        cause = wait_for_job(runner, t, job.name, poll)
        if cause is None:
            runner.step(f"{now()} job {job.name} finished: exit status 0" + (f" after {restarts} restart(s)" if restarts else ""))
            return 0
        if restarts >= max_restarts:
            raise UserError(f"job {job.name} lost: {cause}" + (f"; no restarts left (--max-restarts {max_restarts})" if max_restarts else "; pass --max-restarts N to recover"))
        restarts += 1
        runner.step(f"{now()} restart {restarts} of {max_restarts}: {cause}; recreating it and starting job {job.name} again")
        recreate(runner, s, poll)
        state, workers = tpu_state(runner, t)
        ops.start_job(runner, s, job, workers)
