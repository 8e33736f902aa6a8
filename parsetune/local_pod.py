"""``parsetune train CONFIG --hosts N`` and ``parsetune eval generate ... --hosts N``: a TPU pod in a box.

Starts N copies of the same command on this machine as one JAX pod (a
coordinator on 127.0.0.1, process ids 0..N-1; see :mod:`parsetune.distributed`). Each process gets
the devices ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` gives it, so one mesh spans N × K
devices, as on an N-host slice. Their output is streamed line by line with a ``[host i]`` prefix.
If one process fails or dies, the others are stopped (SIGTERM, then SIGKILL) and the pod fails as a
whole with one line naming the host, its exit status and its last line of output.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from parsetune.errors import UserError
from parsetune.distributed import COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV

STOP_GRACE_SECONDS = 10.0
MAX_LOCAL_HOSTS = 16


@dataclass(frozen=True)
class HostExit:
    host: int
    returncode: int
    last_line: str

    def describe(self) -> str:
        if self.returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                how = f"was killed by signal {-self.returncode}"
        else:
            how = f"exited with status {self.returncode}"
        return f"host {self.host} {how}" + (f" (last line: {self.last_line})" if self.last_line else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_env(host: int, hosts: int, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({COORDINATOR_ENV: f"127.0.0.1:{port}", NUM_PROCESSES_ENV: str(hosts), PROCESS_ID_ENV: str(host)})
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Host:
    def __init__(self, host: int, argv: list[str], env: dict[str, str], out_lock: threading.Lock):
        self.host = host
        self.last_line = ""
        self._lock = out_lock
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.reader = threading.Thread(target=self._stream, daemon=True)
        self.reader.start()

    def _stream(self) -> None:
        prefix = f"[host {self.host}] "
        buffer = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                break
            buffer += chunk
            # tqdm redraws with \r: treat it as a line end too, so the bar streams step by step
            *lines, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
            self._write(prefix, lines)
        self._write(prefix, [buffer] if buffer else [])

    def _write(self, prefix: str, lines: list[bytes]) -> None:
        text = [line.decode("utf-8", "replace").rstrip() for line in lines]
        text = [t for t in text if t]
        if not text:
            return
        self.last_line = text[-1]
        with self._lock:
            sys.stderr.write("".join(prefix + t + "\n" for t in text))
            sys.stderr.flush()

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


def run_local_pod(argv: list[str], hosts: int, poll_seconds: float = 0.2) -> list[HostExit]:
    """Run ``argv`` as ``hosts`` cooperating processes; return how each ended (host 0 first).
    The first failure stops the rest."""
    if not 1 <= hosts <= MAX_LOCAL_HOSTS:
        raise UserError(f"--hosts must be between 1 and {MAX_LOCAL_HOSTS}, got {hosts}")
    port = free_port()
    lock = threading.Lock()
    procs = [_Host(i, argv, host_env(i, hosts, port), lock) for i in range(hosts)]
    first_failure: HostExit | None = None
    try:
        while [p.proc.poll() for p in procs].count(None):  # poll every host (any() would stop at the first)
            failed = [p for p in procs if p.proc.returncode not in (None, 0)]
            if failed:  # a host killed by a signal is the cause; the others may already have failed from it
                p = min(failed, key=lambda h: (h.proc.returncode > 0, h.host))
                p.reader.join(timeout=2)
                first_failure = HostExit(p.host, p.proc.returncode, p.last_line)
                _stop_all(procs)
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        _stop_all(procs)
        raise
    for p in procs:
        p.proc.wait()
        p.reader.join(timeout=5)
    exits = [HostExit(p.host, p.proc.returncode, p.last_line) for p in procs]
    if first_failure is None:  # every host ended between two polls: a host killed by a signal is the cause
        failed = [e for e in exits if e.returncode != 0]
        first_failure = min(failed, key=lambda e: (e.returncode > 0, e.host)) if failed else None
    if first_failure is not None:
        exits = [first_failure] + [e for e in exits if e.host != first_failure.host]
    return exits


def _stop_all(procs: list[_Host]) -> None:
    for p in procs:
        if p.proc.poll() is None:
            p.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and any(p.proc.poll() is None for p in procs):
        time.sleep(0.1)
    for p in procs:
        if p.proc.poll() is None:
            p.signal(signal.SIGKILL)


def pod_failure(exits: list[HostExit]) -> str | None:
    """One line for a failed pod (None if every host exited 0)."""
    first = exits[0]
    if first.returncode == 0:
        return None
    others = [e.host for e in exits[1:] if e.returncode != 0]
    stopped = f"; stopped the other hosts ({', '.join(map(str, others))})" if others else ""
    return f"the simulated pod failed: {first.describe()}{stopped}"
