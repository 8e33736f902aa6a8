"""The ``parsetune tpu`` operations: create, setup, submit, logs, status, stop, delete.

Each prints its steps, runs gcloud through a :class:`Runner` (which only prints in a dry run) and
turns failures into one-line :class:`UserError` messages that name the worker.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass

from infra import gcloud, remote
from infra.jobs import JobSpec
from infra.package import resolve, uncommitted_changes, repo_root
from infra.runner import Result, Runner, error_line
from infra.secrets import Secrets, private_dir, write_env_file
from infra.settings import TpuSettings, declared_run_dir
from infra.target import TpuTarget
from parsetune import storage
from parsetune.errors import UserError

JOB_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def check_job(job: str) -> str:
    if not JOB_RE.fullmatch(job):
        raise UserError(f"invalid job name {job!r}: lowercase letters, digits, '.', '_' and '-', at most 63 characters")
    return job


def default_job_name(config_path: str, now: datetime.datetime | None = None) -> str:
    stem = os.path.basename(config_path.rstrip("/")).rsplit(".", 1)[0].lower()
    stem = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")[:40] or "job"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{stem}-{now:%Y%m%d-%H%M%S}"


def preflight(runner: Runner) -> None:
    """gcloud on PATH and an active account."""
    runner.check_gcloud()
    res = runner.run(gcloud.auth_list(), what="gcloud auth list", capture=True)
    if runner.dry_run:
        return
    try:
        accounts = json.loads(res.stdout or "[]")
    except json.JSONDecodeError:
        accounts = []
    if not any(a.get("status") == "ACTIVE" for a in accounts if isinstance(a, dict)):
        raise UserError("gcloud is not authenticated: run `gcloud auth login` (no active account in `gcloud auth list`)")


def describe(runner: Runner, target: TpuTarget) -> dict | None:
    res = runner.run(gcloud.describe(target), what=f"describe TPU {target.name}", capture=True)
    if runner.dry_run:
        return None
    return parse_describe(target, res.stdout)


def parse_describe(target: TpuTarget, stdout: str) -> dict:
    try:
        info = json.loads(stdout)
    except json.JSONDecodeError as err:
        raise UserError(f"describe TPU {target.name}: gcloud did not print JSON ({err})") from err
    if not isinstance(info, dict):
        raise UserError(f"describe TPU {target.name}: gcloud did not print a JSON object")
    return info


def require_ready(runner: Runner, target: TpuTarget) -> int:
    """Fail unless the TPU is READY; the number of workers (from describe, or the accelerator in a dry run)."""
    runner.step(f"checking that TPU {target.name} is READY")
    info = describe(runner, target)
    if info is None:
        return target.hosts
    state = info.get("state", "UNKNOWN")
    if state != "READY":
        raise UserError(f"TPU {target.name} in {target.zone} is {state}, not READY (see `parsetune tpu status`)")
    return len(info.get("networkEndpoints") or []) or target.hosts


def ssh_step(runner: Runner, target: TpuTarget, name: str, script: str, workers: int, what: str, worker: int | str = "all") -> None:
    """Run a :func:`remote.step` script on all workers (or one); on failure, ask each for its status and log."""
    res = runner.run(gcloud.ssh(target, script, worker), what=what, check=False)
    if res.ok:
        return
    runner.step(f"{what} failed; asking each worker for its {name} status")
    asked = list(range(workers)) if worker == "all" else [int(worker)]
    reports = runner.run_many([gcloud.ssh(target, remote.step_report(name), w) for w in asked], what=what)
    failed = []
    for worker, rep in zip(asked, reports):
        lines = rep.stdout.splitlines()
        rc = lines[0].partition("=")[2] if lines and lines[0].startswith("rc=") else "?"
        if rc not in ("0",):
            failed.append((worker, rc, lines[1:] if rep.ok else [error_line(rep.stderr)]))
    for worker, rc, tail in failed:
        runner.say(f"--- worker {worker} ({name} exit status {rc}), last lines:", to_err=True)
        for line in tail[-20:]:
            runner.say("    " + line, to_err=True)
    if not failed:
        raise UserError(f"{what} failed: {runner.secrets.mask(error_line(res.stderr))}")
    worker, rc, tail = failed[0]
    last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
    others = f" (also workers {', '.join(str(w) for w, _, _ in failed[1:])})" if len(failed) > 1 else ""
    raise UserError(f"{what} failed on worker {worker}{others}, exit status {rc}: {runner.secrets.mask(last)}")


def create(runner: Runner, s: TpuSettings) -> int:
    t = s.target
    preflight(runner)
    kind = "queued resource" if t.queued else "TPU VM"
    extra = ", spot" if t.spot else ", preemptible" if t.preemptible else ""
    runner.step(f"creating {kind} {t.name} ({t.accelerator_type}, {t.hosts} workers, {t.runtime}{extra}) in {t.zone}; this takes minutes")
    runner.run(gcloud.create(t), what=f"create {t.name}")
    if t.queued:
        runner.step(f"requested; `parsetune tpu status --name {t.name} --zone {t.zone} --queued` shows when it is ACTIVE")
        return 0
    info = describe(runner, t)
    if info is not None:
        runner.step(f"TPU {t.name} is {info.get('state', 'UNKNOWN')}; next: parsetune tpu setup")
    return 0


def setup(runner: Runner, s: TpuSettings) -> int:
    t = s.target
    preflight(runner)
    workers = require_ready(runner, t)
    with private_dir() as tmp:
        pkg = resolve(s.source, tmp)
        if pkg.build_argv:
            if not runner.dry_run and uncommitted_changes(repo_root()):
                runner.say("warning: uncommitted changes are not installed (only the committed HEAD is)", to_err=True)
            runner.step(f"packing {pkg.describe}")
            runner.run(pkg.build_argv, what="git archive")
        if pkg.local_file:
            runner.step(f"copying {os.path.basename(pkg.local_file)} to {workers} workers")
            runner.run(gcloud.ssh(t, f"mkdir -p {remote.DIST}"), what="mkdir on the workers")
            runner.run(gcloud.scp(t, pkg.local_file, pkg.remote_file), what="copy the package")
        runner.step(f"installing Python {remote.PYTHON_VERSION}, parsetune ({pkg.describe}) and {remote.JAX_TPU} on {workers} workers "
                    f"(log: ~/{remote.STEPS}/setup.log on each)")
        ssh_step(runner, t, "setup", remote.setup(pkg.requirement, pkg.remote_file), workers, "setup")
    runner.step("setup done; next: parsetune tpu submit --config CONFIG")
    return 0


def worker_choice(spec: JobSpec, worker: str | None) -> int | str:
    """``all`` or a worker index, from ``--worker`` or the job's default (train/run: all; others: 0)."""
    choice = worker if worker is not None else spec.default_worker
    if choice == "all":
        return "all"
    if not choice.isdigit():
        raise UserError(f"--worker {choice!r}: expected 'all' or a worker number")
    return int(choice)


def job_run_dir(spec: JobSpec, s: TpuSettings, config: str | None, hosts: int, max_restarts: int) -> str | None:
    """The run dir a train/run job gets as ``--run_dir`` (None: the config's own, on a one-host TPU only)."""
    if not spec.needs_config or s.run_dir:
        return s.run_dir if spec.needs_config else None
    own = declared_run_dir(config) if config else None
    own_text = f" (the config's run_dir {own!r} would be on each worker's own disk)" if own else ""
    if hosts > 1:
        raise UserError(f"TPU {s.target.name} has {hosts} workers: a multi-host {spec.command} needs one gs:// run dir every "
                        f"worker writes to{own_text}: pass --run-dir gs://BUCKET/PREFIX or set tpu.run_dir")  # fmt: skip
    if max_restarts:
        raise UserError(f"--max-restarts needs a gs:// run dir (a recreated TPU VM starts with an empty disk){own_text}: "
                        "pass --run-dir gs://BUCKET/PREFIX or set tpu.run_dir")  # fmt: skip
    return None


def submit(
    runner: Runner, s: TpuSettings, config: str | None, spec: JobSpec, job: str | None, worker: str | None = None,
    watch: bool = False, max_restarts: int = 0, poll: float = 60.0,
) -> int:  # fmt: skip
    """Start ``spec`` on the workers; with ``watch``/``max_restarts``, wait for it and recover from preemptions."""
    t = s.target
    if spec.needs_config and not config:
        raise UserError(f"submit needs --config CONFIG (the config `parsetune {spec.command}` runs)")
    if max_restarts < 0 or poll <= 0:
        raise UserError("--max-restarts must be >= 0 and --poll > 0")
    if max_restarts and t.queued:
        raise UserError("--max-restarts does not recreate queued resources yet: submit to a TPU VM, or watch it yourself")
    job = check_job(job or default_job_name(config or spec.command))
    run_on = worker_choice(spec, worker)
    run_dir = job_run_dir(spec, s, config, t.hosts if run_on == "all" else 1, max_restarts)
    secrets = Secrets.from_environ(s.secrets)
    secrets.require(s.required_secrets)  # before any gcloud call: a named secret that is unset is a mistake
    data = storage.read_bytes(config) if spec.needs_config and config else None
    runner.secrets = secrets
    preflight(runner)
    workers = require_ready(runner, t)
    if run_on != "all" and run_on >= workers:
        raise UserError(f"--worker {run_on}: TPU {t.name} has workers 0..{workers - 1}")
    if run_on == "all":  # describe knows the real worker count (the accelerator flag may be missing or wrong)
        run_dir = job_run_dir(spec, s, config, workers, max_restarts)
    job_spec = Job(spec, job, config, data, secrets, run_on, run_dir)
    start_job(runner, s, job_spec, workers)
    where = f"--name {t.name} --zone {t.zone}"
    if not (watch or max_restarts):
        on = "each worker" if run_on == "all" else f"worker {run_on}"
        runner.step(f"job {job} started; log ~/{remote.JOBS}/{job}.log on {on}")
        runner.step(f"follow it: parsetune tpu logs {where} --follow; check it: parsetune tpu status {where}")
        return 0
    from infra.watch import watch_job

    return watch_job(runner, s, job_spec, max_restarts, poll)


@dataclass(frozen=True)
class Job:
    """Everything needed to start a job again on a recreated TPU (the secrets stay in memory only)."""

    spec: JobSpec
    name: str
    config: str | None
    data: bytes | None  # the config's bytes, read once: a restart runs exactly the same config
    secrets: Secrets
    run_on: int | str
    run_dir: str | None


def start_job(runner: Runner, s: TpuSettings, job: Job, workers: int) -> None:
    """Check the workers (installed, nothing running) first; only then copy anything and launch."""
    t, name = s.target, job.name
    runner.step(f"checking the {workers} workers (parsetune installed, no job running)")
    ssh_step(runner, t, "prepare", remote.prepare(), workers, "checking the workers")
    where = "every worker" if job.run_on == "all" else f"worker {job.run_on}"
    with private_dir() as tmp:
        remote_config = None
        if job.data is not None:
            remote_config = f"{remote.JOBS}/{name}.yaml"
            local_config = os.path.join(tmp, "config.yaml")
            if not runner.dry_run:
                with open(local_config, "wb") as f:
                    f.write(job.data)
            runner.step(f"copying {job.config} to {where}")
            runner.run(gcloud.scp(t, local_config, remote_config, job.run_on), what="copy the config")
        env_path = os.path.join(tmp, f"{name}.env")
        if not runner.dry_run:
            write_env_file(tmp, f"{name}.env", job.secrets)
        runner.step(f"copying the job's env file (0600: {job.secrets.describe()}) to {where}")
        runner.run(gcloud.scp(t, env_path, f"{remote.JOBS}/{name}.env", job.run_on), what="copy the env file")
        if job.run_on != "all" and workers > 1:
            runner.step(f"marking job {name} on the other workers (it runs on worker {job.run_on} only)")
            runner.run(gcloud.ssh(t, remote.elsewhere(name, int(job.run_on))), what="mark the job on the workers")
        argv = job.spec.argv(remote.PARSETUNE, remote_config, job.run_dir)
        runner.step(f"starting job {name} on {where if job.run_on != 'all' else f'all {workers} workers'}: "
                    f"{job.spec.describe(remote_config, job.run_dir)}")  # fmt: skip
        try:
            ssh_step(runner, t, "launch", remote.launch(name, argv), workers, "starting the job", job.run_on)
        except UserError:
            runner.step("stopping the job on the workers where it did start")
            runner.run(gcloud.ssh(t, remote.stop(name, grace_seconds=5)), what="stop", check=False)
            raise


def logs(runner: Runner, s: TpuSettings, job: str | None, worker: int | None, lines: int, follow: bool) -> int:
    t = s.target
    if job:
        check_job(job)
    runner.secrets = Secrets.from_environ(s.secrets)  # a job's log may print a secret: mask it like submit does
    preflight(runner)
    workers = require_ready(runner, t)
    if worker is not None and not 0 <= worker < workers:
        raise UserError(f"--worker {worker}: TPU {t.name} has workers 0..{workers - 1}")
    if follow or worker is not None:
        runner.run(gcloud.ssh(t, remote.tail(job, lines, follow), "all" if worker is None else worker), what="logs")
        return 0
    results = runner.run_many([gcloud.ssh(t, remote.tail(job, lines, False), w) for w in range(workers)], what="logs")
    for w, res in enumerate(results):
        if not runner.dry_run:
            runner.say(f"==> worker {w} <==")
            runner.say(res.stdout.rstrip("\n") if res.ok else f"(no log: {error_line(res.stderr)})")
    return 0


def parse_probe(text: str) -> tuple[dict[str, str], list[str]]:
    head, _, log = text.partition("--- log\n")
    fields = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    return fields, log.splitlines()


@dataclass(frozen=True)
class WorkerJob:
    """One worker's view of a job, from :func:`remote.probe`."""

    worker: int
    job: str
    state: str  # running | exited | died | stopped | skipped | unreachable | none | unknown
    rc: str | None
    log: list[str]

    @property
    def failed(self) -> bool:
        return self.state in ("died", "unreachable") or (self.state == "exited" and self.rc != "0")

    @property
    def done(self) -> bool:
        return (self.state == "exited" and self.rc == "0") or self.state == "skipped"

    def describe(self) -> str:
        if self.state == "unreachable":
            return f"unreachable ({self.log[-1] if self.log else '?'})"
        if self.state == "skipped":
            return "skipped (the job runs on another worker)"
        return self.state + (f" (exit status {self.rc})" if self.rc is not None else "")


def probe_workers(runner: Runner, t: TpuTarget, job: str | None, workers: int, lines: int, show: bool = True) -> list[WorkerJob]:
    results = runner.run_many([gcloud.ssh(t, remote.probe(job, lines), w) for w in range(workers)], what="status", show=show)
    states = []
    for w, res in enumerate(results):
        if not res.ok:
            states.append(WorkerJob(w, job or "-", "unreachable", None, [error_line(res.stderr)]))
            continue
        fields, log = parse_probe(res.stdout)
        state, rc = fields.get("state", "unknown"), fields.get("rc")
        if rc in ("stopped", "skipped"):
            state, rc = rc, None
        states.append(WorkerJob(w, fields.get("job", "-"), state, rc, log))
    return states


def report_failures(runner: Runner, states: list[WorkerJob], lines: int) -> None:
    """Print the failed workers' last log lines; raise one line naming the first."""
    failures = [s for s in states if s.failed]
    if not failures:
        return
    for s in failures:
        runner.say(f"--- worker {s.worker} ({s.describe()}), last log lines:", to_err=True)
        for line in s.log[-lines:]:
            runner.say("    " + line, to_err=True)
    first = failures[0]
    last = next((x.strip() for x in reversed(first.log) if x.strip()), "no output")
    what = "unreachable" if first.state == "unreachable" else first.describe()
    raise UserError(f"job failed on worker {first.worker}: {what}: {runner.secrets.mask(last)}")


def status(runner: Runner, s: TpuSettings, job: str | None, lines: int) -> int:
    t = s.target
    if job:
        check_job(job)
    runner.secrets = Secrets.from_environ(s.secrets)  # a job's log may print a secret: mask it like submit does
    preflight(runner)
    if t.queued:
        res = runner.run(gcloud.describe_queued(t), what=f"describe queued resource {t.name}", capture=True)
        if not runner.dry_run:
            qstate = (json.loads(res.stdout or "{}").get("state") or {}).get("state", "UNKNOWN")
            runner.say(f"queued resource {t.name}: {qstate}")
            if qstate != "ACTIVE":
                return 0
    info = describe(runner, t)
    workers = t.hosts
    if info is not None:
        workers = len(info.get("networkEndpoints") or []) or t.hosts
        health = f", health {info['health']}" if info.get("health") else ""
        runner.say(f"TPU {t.name}: {info.get('state', 'UNKNOWN')}, {info.get('acceleratorType', '?')}, {workers} workers{health}")
        if info.get("state") != "READY":
            return 0
    states = probe_workers(runner, t, job, workers, lines)
    if runner.dry_run:
        return 0
    for st in states:
        if st.state == "unreachable":
            runner.say(f"worker {st.worker}: {st.describe()}")
        else:
            runner.say(f"worker {st.worker}: job {st.job} {st.describe()}")
    report_failures(runner, states, lines)
    return 0


def stop(runner: Runner, s: TpuSettings, job: str | None, grace: int) -> int:
    t = s.target
    if job:
        check_job(job)
    runner.secrets = Secrets.from_environ(s.secrets)
    preflight(runner)
    workers = require_ready(runner, t)
    runner.step(f"stopping {'job ' + job if job else 'the current job'} on {workers} workers (SIGTERM, SIGKILL after {grace} s)")
    runner.run(gcloud.ssh(t, remote.stop(job, grace)), what="stop")
    return 0


def delete(runner: Runner, s: TpuSettings) -> int:
    t = s.target
    preflight(runner)
    runner.step(f"deleting {'queued resource' if t.queued else 'TPU VM'} {t.name} in {t.zone}")
    runner.run(gcloud.delete(t), what=f"delete {t.name}")
    runner.step("deleted")
    return 0
