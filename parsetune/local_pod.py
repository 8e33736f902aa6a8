"""``parsetune train CONFIG --hosts N`` and ``parsetune eval generate ... --hosts N``: a TPU pod in a box.

Starts N copies of the same command on this machine as one JAX pod (a
coordinator on 127.0.0.1, process ids 0..N-1; see :mod:`parsetune.distributed`). Each process gets
the devices ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` gives it, so one mesh spans N × K
devices, as on an N-host slice. Their output is streamed line by line with a ``[host i]`` prefix.
If one process fails or dies, the others are stopped (SIGTERM, then SIGKILL) and the pod fails as a
whole with one line naming the host, its exit status and its last line of output.

The hosts run in their own sessions (a terminal's Ctrl-C reaches the launcher only), so the launcher
forwards SIGTERM/SIGINT to every host, waits up to PARSETUNE_POD_STOP_GRACE seconds (30) for them to
stop, SIGKILLs what is left and raises :class:`PodStopped`: no host outlives it. Should the launcher
itself be SIGKILLed, each host notices its parent is gone and stops (:mod:`parsetune.signals`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from parsetune.errors import UserError
from parsetune.distributed import COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV
from parsetune.signals import LAUNCHER_PID_ENV

STOP_GRACE_ENV = "PARSETUNE_POD_STOP_GRACE"
DEFAULT_STOP_GRACE_SECONDS = 30.0  # more than a host's own deadline (PARSETUNE_STOP_DEADLINE, 20 s)
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


class PodStopped(Exception):
    """The launcher got SIGTERM/SIGINT and stopped every host: ``exits`` says how each ended."""

    def __init__(self, signum: int, exits: list[HostExit]):
        self.signum = signum
        self.exits = exits
        ends = ", ".join(e.describe() for e in exits)
        super().__init__(f"stopped by {signal.Signals(signum).name}: stopped the {len(exits)} hosts of the simulated pod ({ends})")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def stop_grace() -> float:
    value = os.environ.get(STOP_GRACE_ENV, "")
    try:
        return float(value) if value else DEFAULT_STOP_GRACE_SECONDS
    except ValueError:
        raise UserError(f"{STOP_GRACE_ENV}={value!r}: expected a number of seconds") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_env(host: int, hosts: int, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({COORDINATOR_ENV: f"127.0.0.1:{port}", NUM_PROCESSES_ENV: str(hosts), PROCESS_ID_ENV: str(host)})
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONUNBUFFERED"] = "1"
    env[LAUNCHER_PID_ENV] = str(os.getpid())  # the host stops should this process die
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


@contextmanager
def _signals_recorded() -> Iterator[list[int]]:
    """SIGTERM/SIGINT only recorded (in the yielded list) while the hosts run: the poll loop forwards
    them. (Raising from the handler could land between a host's fork and its bookkeeping.)"""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_local_pod(argv: list[str], hosts: int, poll_seconds: float = 0.2) -> list[HostExit]:
    """Run ``argv`` as ``hosts`` cooperating processes; return how each ended (host 0 first).
    The first failure stops the rest; SIGTERM/SIGINT stops them all and raises :class:`PodStopped`."""
    if not 1 <= hosts <= MAX_LOCAL_HOSTS:
        raise UserError(f"--hosts must be between 1 and {MAX_LOCAL_HOSTS}, got {hosts}")
    grace = stop_grace()
    port = free_port()
    lock = threading.Lock()
    first_failure: HostExit | None = None
    with _signals_recorded() as received:
        procs: list[_Host] = []
        try:
            for i in range(hosts):
                procs.append(_Host(i, argv, host_env(i, hosts, port), lock))
            while not received and [p.proc.poll() for p in procs].count(None):  # poll every host (any() would stop at the first)
                failed = [p for p in procs if p.proc.returncode not in (None, 0)]
                if failed:  # a host killed by a signal is the cause; the others may already have failed from it
                    p = min(failed, key=lambda h: (h.proc.returncode > 0, h.host))
                    p.reader.join(timeout=2)
                    first_failure = HostExit(p.host, p.proc.returncode, p.last_line)
                    _stop_all(procs, grace, signal.SIGTERM, received)
                    break
                time.sleep(poll_seconds)
            if received:
                _stop_all(procs, grace, received[0], received)
        except BaseException:
            _stop_all(procs, grace, signal.SIGTERM, received)
            raise
    for p in procs:
        p.proc.wait()
        p.reader.join(timeout=5)
    exits = [HostExit(p.host, p.proc.returncode, p.last_line) for p in procs]
    if received:
        raise PodStopped(received[0], exits)
    if first_failure is None:  # every host ended between two polls: a host killed by a signal is the cause
        failed = [e for e in exits if e.returncode != 0]
        first_failure = min(failed, key=lambda e: (e.returncode > 0, e.host)) if failed else None
    if first_failure is not None:
        exits = [first_failure] + [e for e in exits if e.host != first_failure.host]
    return exits


def _stop_all(procs: list[_Host], grace: float, sig: int, received: list[int]) -> None:
    """``sig`` to every running host; SIGKILL to those still running after ``grace`` seconds, or at
    once on a further SIGTERM/SIGINT to the launcher."""
    for p in procs:
        if p.proc.poll() is None:
            p.signal(sig)
    signals_before = len(received)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and len(received) <= max(signals_before, 1) and any(p.proc.poll() is None for p in procs):
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
