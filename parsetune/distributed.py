"""Several cooperating JAX processes: a multi-host TPU slice, or the same pod simulated on one machine.

On a TPU VM, ``jax.distributed.initialize()`` finds the coordinator, the process count and this
host's index by itself. Anywhere else (the simulated pod of ``parsetune train --hosts N``, the
stand-in TPU workers of the tests, a hand-made cluster) they come from Levanter's distributed config
(``--trainer.distributed.coordinator_address`` ...) or from these environment variables, which fill
in what the config leaves unset:

    PARSETUNE_COORDINATOR_ADDRESS   host:port of process 0's coordination service
    PARSETUNE_NUM_PROCESSES         how many processes take part
    PARSETUNE_PROCESS_ID            this process's index, 0 .. N-1

On CPU the processes exchange data through gloo collectives (``jax_cpu_collectives_implementation``).
We initialise ``jax.distributed`` ourselves (before anything touches a JAX backend) so that a lost
peer is noticed within ``PARSETUNE_HEARTBEAT_TIMEOUT`` seconds, not Levanter's 30-minute timeout;
Levanter is then told not to initialise it again. A process of a pod then stops within a bounded
time on SIGTERM/SIGINT, or when its ``--hosts N`` launcher dies (:func:`parsetune.signals.stop_on_signals`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import traceback
from dataclasses import dataclass

from parsetune.errors import UserError

COORDINATOR_ENV = "PARSETUNE_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "PARSETUNE_NUM_PROCESSES"
PROCESS_ID_ENV = "PARSETUNE_PROCESS_ID"
HEARTBEAT_ENV = "PARSETUNE_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_SECONDS = 60
INIT_TIMEOUT_SECONDS = 300

logger = logging.getLogger("parsetune.distributed")


@dataclass(frozen=True)
class PodSettings:
    """Where this process sits in the pod (all None: a single process, or a TPU that finds out itself)."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None

    @property
    def explicit(self) -> bool:
        return self.num_processes is not None and self.num_processes > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r}: expected an integer") from None


def pod_settings(distributed_config) -> PodSettings:
    """Levanter's ``trainer.distributed`` values, completed from the PARSETUNE_* environment."""
    settings = PodSettings(
        coordinator_address=distributed_config.coordinator_address or os.environ.get(COORDINATOR_ENV) or None,
        num_processes=distributed_config.num_processes if distributed_config.num_processes is not None else _env_int(NUM_PROCESSES_ENV),
        process_id=distributed_config.process_id if distributed_config.process_id is not None else _env_int(PROCESS_ID_ENV),
    )
    given = [v is not None for v in (settings.coordinator_address, settings.num_processes, settings.process_id)]
    if any(given) and not all(given) and settings.num_processes != 1:
        raise UserError(
            "a multi-process run needs all three of coordinator address, number of processes and process id "
            f"(trainer.distributed.* or {COORDINATOR_ENV}/{NUM_PROCESSES_ENV}/{PROCESS_ID_ENV}); got {settings}"
        )
    if settings.num_processes is not None and settings.num_processes < 1:
        raise UserError(f"number of processes must be >= 1, got {settings.num_processes}")
    if settings.explicit and not 0 <= settings.process_id < settings.num_processes:
        raise UserError(f"process id {settings.process_id} is not in 0..{settings.num_processes - 1}")
    return settings


def initialize(trainer_config):
    """Join the pod (if there is one) and return the trainer config with Levanter's own
    ``jax.distributed`` initialisation turned off. Call before anything uses a JAX backend."""
    _join(trainer_config.distributed)
    distributed = dataclasses.replace(trainer_config.distributed, initialize_jax_distributed=False)
    return dataclasses.replace(trainer_config, distributed=distributed)


def join_pod() -> None:
    """``initialize`` for a command without a trainer config (``eval generate``): the PARSETUNE_*
    environment, or what Levanter detects by itself on a TPU slice. Call before any JAX backend use."""
    from levanter.distributed import DistributedConfig

    _join(DistributedConfig())


def _join(distributed_config) -> None:
    import jax

    from parsetune.signals import stop_on_signals

    _initialize(distributed_config)
    if jax.distributed.is_initialized():
        # JAX's preemption notifier has just taken SIGTERM and would swallow it: a pod host must stop
        # within a bounded time (a TPU VM is killed ~30 s after its preemption notice)
        stop_on_signals(f"process {jax.process_index()}")


def _initialize(distributed_config) -> None:
    import jax

    settings = pod_settings(distributed_config)
    if not settings.explicit:
        # one process, or a TPU slice that describes itself: what Levanter would do, done now, so
        # that jax.process_index() is right from here on
        if not jax.distributed.is_initialized():
            distributed_config.initialize()
    elif not jax.distributed.is_initialized():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        heartbeat = _env_int(HEARTBEAT_ENV) or DEFAULT_HEARTBEAT_SECONDS
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            initialization_timeout=INIT_TIMEOUT_SECONDS,
            heartbeat_timeout_seconds=heartbeat,
        )


def is_chief() -> bool:
    """True on the one process that writes run-level files (config, metrics, export, report)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (a no-op for a single process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def host_local_copy(tree):
    """Every array of ``tree`` whole, on this process's CPU device.

    A model sharded over a multi-host mesh has shards this process cannot read; each is gathered
    (a collective: every process must call this with the same tree). Writers then work on plain
    local arrays, whatever the mesh was, and the export is byte-identical for any host layout.
    """
    import jax
    from jax.experimental import multihost_utils

    cpu = jax.local_devices(backend="cpu")[0]

    def to_local(x):
        if not isinstance(x, jax.Array):
            return x
        if not x.is_fully_addressable:
            x = multihost_utils.process_allgather(x, tiled=True)
        return jax.device_put(x, cpu)

    return jax.tree_util.tree_map(to_local, tree)


PEER_LOSS_SIGNS = ("Gloo", "Connection reset by peer", "Connection closed", "coordination service", "heartbeat", "Barrier timed out")


def lost_peer(err: BaseException) -> bool:
    """Whether an error says another process of the pod is gone (collectives or coordination failed)."""
    text = f"{type(err).__name__}: {err}"
    return any(sign in text for sign in PEER_LOSS_SIGNS)


@contextlib.contextmanager
def fail_fast(command: str):
    """In a multi-process run, a failing process exits at once with its error instead of waiting in
    JAX's shutdown barrier for peers that will never arrive (minutes); the others then see it gone."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as err:
        import jax

        if not jax.distributed.is_initialized() or jax.process_count() == 1:
            raise
        from parsetune.errors import UserError

        if isinstance(err, UserError):
            print(f"parsetune {command}: error: {err}", file=sys.stderr)
        elif isinstance(err, KeyboardInterrupt):
            print(f"parsetune {command}: process {jax.process_index()} stopped ({err or 'interrupted'})", file=sys.stderr)
        elif lost_peer(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(
                f"parsetune {command}: error on process {jax.process_index()}: lost contact with another process of the pod "
                f"({first[:200]}); rerun the same command on every host to resume from the last checkpoint",
                file=sys.stderr,
            )
        else:
            traceback.print_exc()
            print(f"parsetune {command}: error on process {jax.process_index()}: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(2 if isinstance(err, UserError) else 130 if isinstance(err, KeyboardInterrupt) else 1)
