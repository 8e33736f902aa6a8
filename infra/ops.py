"""The ``parsetune tpu`` operations: create, setup, submit, logs, status, stop, delete.

Each prints its steps, runs gcloud through a :class:`Runner` (which only prints in a dry run) and
turns failures into one-line :class:`UserError` messages that name the worker.
"""

from __future__ import annotations

import datetime
import json
import os
import re

from infra import gcloud, remote
from infra.package import resolve, uncommitted_changes, repo_root
from infra.runner import Result, Runner, error_line
from infra.secrets import Secrets, private_dir, write_env_file
from infra.settings import TpuSettings
from infra.target import TpuTarget
from parsetune import storage
from parsetune.errors import UserError

JOB_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def check_job(job: str) -> str:
    if not JOB_RE.match(job):
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
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError as err:
        raise UserError(f"describe TPU {target.name}: gcloud did not print JSON ({err})") from err


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


def ssh_step(runner: Runner, target: TpuTarget, name: str, script: str, workers: int, what: str) -> None:
    """Run a :func:`remote.step` script on all workers; on failure, ask each worker for its status and log."""
    res = runner.run(gcloud.ssh(target, script), what=what, check=False)
    if res.ok:
        return
    runner.step(f"{what} failed; asking each worker for its {name} status")
    reports = runner.run_many([gcloud.ssh(target, remote.step_report(name), w) for w in range(workers)], what=what)
    failed = []
    for worker, rep in enumerate(reports):
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
    raise UserError(f"{what} failed on worker {worker}{others}, exit status {rc}: {last}")


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


def submit(runner: Runner, s: TpuSettings, config: str, job: str | None, train_args: list[str]) -> int:
    t = s.target
    job = check_job(job or default_job_name(config))
    data = storage.read_bytes(config)
    secrets = Secrets.from_environ(s.secrets)
    runner.secrets = secrets
    preflight(runner)
    workers = require_ready(runner, t)
    with private_dir() as tmp:
        if s.run_dir:
            remote_config = f"{s.run_dir}/config.yaml"
            runner.step(f"copying {config} -> {remote_config}")
            if not runner.dry_run:
                storage.write_bytes_atomic(remote_config, data)
        else:
            remote_config = f"{remote.JOBS}/{job}.yaml"
        runner.step(f"checking the {workers} workers (parsetune installed, no job running)")
        ssh_step(runner, t, "prepare", remote.prepare(), workers, "checking the workers")
        if not s.run_dir:
            local_config = os.path.join(tmp, "config.yaml")
            if not runner.dry_run:
                with open(local_config, "wb") as f:
                    f.write(data)
            runner.step(f"copying {config} to every worker (no run_dir set)")
            runner.run(gcloud.scp(t, local_config, remote_config), what="copy the config")
        env_path = os.path.join(tmp, f"{job}.env")
        if not runner.dry_run:
            write_env_file(tmp, f"{job}.env", secrets)
        runner.step(f"copying the job's env file (0600: {secrets.describe()}) to every worker")
        runner.run(gcloud.scp(t, env_path, f"{remote.JOBS}/{job}.env"), what="copy the env file")
        runner.step(f"starting job {job} on all {workers} workers: parsetune train {remote_config}")
        try:
            ssh_step(runner, t, "launch", remote.launch(job, remote_config, s.run_dir, train_args), workers, "starting the job")
        except UserError:
            runner.step("stopping the job on the workers where it did start")
            runner.run(gcloud.ssh(t, remote.stop(job, grace_seconds=5)), what="stop", check=False)
            raise
    where = f"--name {t.name} --zone {t.zone}"
    runner.step(f"job {job} started; log ~/{remote.JOBS}/{job}.log on each worker")
    runner.step(f"follow it: parsetune tpu logs {where} --follow; check it: parsetune tpu status {where}")
    return 0


def logs(runner: Runner, s: TpuSettings, job: str | None, worker: int | None, lines: int, follow: bool) -> int:
    t = s.target
    if job:
        check_job(job)
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


def status(runner: Runner, s: TpuSettings, job: str | None, lines: int) -> int:
    t = s.target
    if job:
        check_job(job)
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
    results = runner.run_many([gcloud.ssh(t, remote.probe(job, lines), w) for w in range(workers)], what="status")
    if runner.dry_run:
        return 0
    failures = []
    for w, res in enumerate(results):
        if not res.ok:
            runner.say(f"worker {w}: unreachable ({error_line(res.stderr)})")
            failures.append((w, "unreachable", [error_line(res.stderr)]))
            continue
        fields, log = parse_probe(res.stdout)
        state, rc = fields.get("state", "unknown"), fields.get("rc")
        if rc == "stopped":
            state, rc = "stopped", None
        detail = f" (exit status {rc})" if rc is not None else ""
        runner.say(f"worker {w}: job {fields.get('job', '-')} {state}{detail}")
        if state == "died" or (state == "exited" and rc != "0"):
            failures.append((w, f"{state}{detail}", log))
    if failures:
        for w, what, log in failures:
            runner.say(f"--- worker {w} ({what}), last log lines:", to_err=True)
            for line in log[-lines:]:
                runner.say("    " + line, to_err=True)
        w, what, log = failures[0]
        last = next((x.strip() for x in reversed(log) if x.strip()), "no output")
        raise UserError(f"job failed on worker {w}: {what}: {last}")
    return 0


def stop(runner: Runner, s: TpuSettings, job: str | None, grace: int) -> int:
    t = s.target
    if job:
        check_job(job)
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
