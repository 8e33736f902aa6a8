"""Stopping a pod: SIGTERM to `--hosts N`'s launcher, SIGTERM to its hosts, and a SIGKILLed launcher.

JAX's preemption notifier swallows SIGTERM in every process of a pod, so a pod host used to run on
until SIGKILL, orphaned when `timeout` ended its launcher. Now:
- the launcher forwards SIGTERM to its hosts, waits for them (SIGKILL after a grace) and exits 143
  with one line; the run dir resumes;
- a host told to stop in the middle of a long generation unwinds at the next decode step;
- a host whose launcher was SIGKILLed stops by itself;
- a host that cannot unwind (stuck in a collective) is ended by its watchdog at the deadline.
The first two tests need no JAX (a few seconds); the pod tests are slow (each starts a real pod).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO
from train_helpers import prepare_tiny_data, run_train, tiny_config

DEVICES = lambda n: {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}  # noqa: E731
TP = {"model_axis_size": 2, "tensor_parallel_axes": ["mlp", "heads", "kv_head", "vocab"]}
LORA = {"type": "lora", "r": 4, "alpha": 8}
STARTUP_TIMEOUT = 600  # a pod's start (compilation) on a busy 2-core machine
STOP_BOUND = 15  # seconds a signalled host may take to unwind (its watchdog deadline is set well above)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper that is not us counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class Lines:
    """A process's stderr, read line by line (tqdm's \\r counts as a line end) in a thread."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in iter(self._stream.readline, ""):
            self.lines += [part for part in line.replace("\r", "\n").splitlines() if part.strip()]

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert proc.poll() is None, f"exited {proc.returncode} before {text!r}:\n" + "\n".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.2)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


def start(argv: list[str], env: dict | None = None, **kwargs) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})}, **kwargs)  # fmt: skip
    return proc, Lines(proc.stderr)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---- the mechanism, without JAX ----------------------------------------------------------------

HOST_SCRIPT = """
import sys, time
from parsetune.signals import stop_on_signals
stop_on_signals("probe", deadline=float(sys.argv[1]))
print("ready", file=sys.stderr, flush=True)
while True:
    try:
        time.sleep(0.05)
    except KeyboardInterrupt:
        if sys.argv[2] == "stuck":
            continue  # a main thread that never unwinds, as one waiting in a collective for a lost peer
        raise
"""

LAUNCHER_SCRIPT = """
import os, subprocess, sys, time
from parsetune.signals import LAUNCHER_PID_ENV
env = {**os.environ, LAUNCHER_PID_ENV: str(os.getpid())}
host = subprocess.Popen([sys.executable, "-c", sys.argv[1], "60", "unwinds"], env=env, start_new_session=True)
print(host.pid, flush=True)
time.sleep(600)
"""


def test_the_watchdog_ends_a_host_that_cannot_unwind_at_its_deadline():
    proc, err = start([sys.executable, "-c", HOST_SCRIPT, "2", "stuck"])
    try:
        err.wait_for("ready", proc, timeout=60)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=2 + STOP_BOUND) == 143
        took = time.monotonic() - sent
    finally:
        stop_all([proc])
    assert 1.5 < took < 2 + STOP_BOUND, took
    assert "probe: stopping (SIGTERM); exiting within 2 s" in err.text()
    assert "probe: did not stop within 2 s of SIGTERM; exiting now" in err.text()


def test_a_host_stops_when_its_launcher_is_sigkilled():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER_SCRIPT, HOST_SCRIPT], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        host = int(launcher.stdout.readline())
        time.sleep(3)  # the host has installed its handlers (it imports nothing heavy)
        assert alive(host)
        launcher.kill()
        launcher.wait()
        assert wait_gone([host], STOP_BOUND) == [], "the host outlived its SIGKILLed launcher"
    finally:
        stop_all([launcher])


# ---- real pods ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir, tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("data"), tiny_model_dir)


@pytest.mark.slow
def test_sigterm_to_the_launcher_during_task_metrics_stops_every_host_and_the_run_resumes(tiny_model_dir, tiny_data, tmp_path):
    run = tmp_path / "run"
    # task metrics after every step (generation dominates the run), a checkpoint after every step
    every_step = {"save_interval": "1000m", "keep": [{"every": 1}]}
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, tiny_data, run, LORA, steps_per_eval=1, checkpointer=every_step, **TP)
    task = ("--task_eval.examples", "8", "--task_eval.batch_size", "8", "--task_eval.max_new_tokens", "64")
    launcher, err = start([sys.executable, "-m", "parsetune", "train", str(config), "--hosts", "2", "--trainer.num_train_steps", "200",
                           "--export", "false", *task], env={**DEVICES(2), "PARSETUNE_STOP_DEADLINE": "60"})  # fmt: skip
    try:
        err.wait_for("after 2 steps:", launcher)  # task metrics ran twice: the next ones run now
        time.sleep(1)
        hosts = children(launcher.pid)
        assert len(hosts) == 2
        launcher.send_signal(signal.SIGTERM)
        status = launcher.wait(timeout=STOP_BOUND + 30)
    finally:
        stop_all([launcher])
    log = err.text()
    assert status == 143, log[-3000:]
    assert wait_gone(hosts, 1) == [], "a host outlived the launcher"
    last = log.strip().splitlines()[-1]
    assert last.startswith("parsetune train: stopped by SIGTERM: stopped the 2 hosts of the simulated pod"), last
    assert "status 130" in last and "SIGKILL" not in last, "each host unwound by itself"

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("task_exact_match" in r for r in rows)
    assert not list(run.glob(".*.tmp")), "no staging file of ours left behind"
    saved = sorted(int(d.name.removeprefix("step-")) for d in (run / "checkpoints").glob("step-*") if (d / "metadata.json").exists())
    assert saved, "the checkpoints of the steps before the stop are there"
    resumed = run_train(config, "--trainer.num_train_steps", str(saved[-1] + 2), "--export", "false", "--data.validation", "null",
                        env=DEVICES(4))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run}/checkpoints at step {saved[-1] + 1}" in resumed.stderr, resumed.stderr[-3000:]


def generate_argv(model: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "parsetune", "eval", "generate", "--model", str(model), "--data", str(data / "validation.jsonl"),
            "--out", str(out), "--max-new-tokens", "200", "--batch-size", "4"]  # fmt: skip


@pytest.mark.slow
def test_sigterm_to_the_hosts_during_a_long_generation_stops_each_within_the_bound(tiny_model_dir, tiny_data, tmp_path):
    """A hand-made pod (as on a TPU slice, no launcher), each host SIGTERMed as by a preemption notice."""
    from parsetune.local_pod import free_port, host_env

    port = free_port()
    base = {**os.environ, **DEVICES(2), "PARSETUNE_STOP_DEADLINE": "120"}  # the watchdog must not be what stops them
    argv = generate_argv(tiny_model_dir, tiny_data, tmp_path / "pred.jsonl")
    hosts = [start(argv, env=host_env(i, 2, port, base)) for i in range(2)]
    try:
        hosts[0][1].wait_for("generate:", hosts[0][0])
        time.sleep(3)  # inside the decoding loop
        sent = time.monotonic()
        for proc, _ in hosts:
            proc.send_signal(signal.SIGTERM)
        statuses = [proc.wait(timeout=STOP_BOUND) for proc, _ in hosts]
        took = time.monotonic() - sent
    finally:
        stop_all([proc for proc, _ in hosts])
    logs = [err.text() for _, err in hosts]
    assert statuses == [130, 130], logs[0][-2000:] + logs[1][-2000:]
    for i, log in enumerate(logs):
        assert f"parsetune eval generate: process {i} stopped (SIGTERM)" in log, log[-2000:]
    assert not (tmp_path / "pred.jsonl").exists(), "no partial predictions"
    print(f"both hosts stopped {took:.1f} s after SIGTERM")


@pytest.mark.slow
def test_the_hosts_stop_when_the_launcher_is_sigkilled(tiny_model_dir, tiny_data, tmp_path):
    argv = generate_argv(tiny_model_dir, tiny_data, tmp_path / "pred.jsonl")
    launcher, err = start([*argv, "--hosts", "2"], env={**DEVICES(2), "PARSETUNE_STOP_DEADLINE": "120"})
    hosts: list[int] = []
    try:
        err.wait_for("[host 0] generate:", launcher)
        hosts = children(launcher.pid)
        assert len(hosts) == 2
        launcher.kill()
        launcher.wait()
        left = wait_gone(hosts, STOP_BOUND)
    finally:
        stop_all([launcher])
        for pid in [p for p in hosts if alive(p)]:  # never leave a pod behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
    assert left == [], "hosts outlived their SIGKILLed launcher"
    assert not (tmp_path / "pred.jsonl").exists()
