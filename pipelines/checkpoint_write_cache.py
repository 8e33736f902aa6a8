"""Checkpoint writes that do not keep a copy of every checkpoint in host memory.

Levanter's ``Checkpointer`` writes through JAX's ``GlobalAsyncCheckpointManager``, which opens every
array with one process-wide TensorStore context whose ``cache_pool`` may hold 10 GB
(``jax.experimental.array_serialization.tensorstore_impl._TS_CONTEXT``). Each written chunk stays in
that cache after its commit (it even references the host copy of the array: the write is made with
``can_reference_source_data_indefinitely``), so the process keeps about one checkpoint's size of RAM
per checkpoint written, up to 10 GB; on a pod, one host's shard per checkpoint. Nothing reads those
chunks back: a checkpoint is read by a fresh manager on resume.

``UncachedCheckpointManager`` writes with a context of the same concurrency limits and a cache pool
of 0 bytes, shared by all its writes (the OCDBT database that holds a checkpoint's arrays must be
opened through one context, or its writers would not be coordinated). Dirty chunks are kept until
committed whatever the limit, so nothing else changes.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import tensorstore as ts
from jax.experimental.array_serialization import tensorstore_impl as ts_impl
from jax.experimental.array_serialization.serialization import GlobalAsyncCheckpointManager

WRITE_CONTEXT_SPEC = {
    "file_io_concurrency": {"limit": 128},
    "data_copy_concurrency": {"limit": 128},
    "cache_pool": {"total_bytes_limit": 0},
    "cache_pool#remote": {"total_bytes_limit": 0},
}


class UncachedCheckpointManager(GlobalAsyncCheckpointManager):
    """``GlobalAsyncCheckpointManager`` whose writes leave nothing in TensorStore's cache pool."""

    def __init__(self, timeout_secs: int = 300):
        super().__init__(timeout_secs=timeout_secs)
        self._write_context = ts.Context(WRITE_CONTEXT_SPEC)

    def serialize(self, arrays, tensorstore_specs, *, on_commit_callback: Callable[[], None] | None = None, transaction=None):
        """As upstream (wait for the previous save, start the copies, commit in a thread), with our context."""
        self.wait_until_finished()
        commit_futures: list = []

        async def start_writes():
            await asyncio.gather(*(
                ts_impl.async_serialize(array, spec, commit_future=commit_futures, context=self._write_context, transaction=transaction)
                for array, spec in zip(arrays, tensorstore_specs)
            ))  # fmt: skip

        asyncio.run(start_writes())
        self._add_futures(commit_futures)
        self._start_async_commit(on_commit_callback)


def without_write_cache(checkpointer):
    """The Levanter ``Checkpointer`` ``checkpointer``, writing through an ``UncachedCheckpointManager``."""
    old = checkpointer._manager
    old.wait_until_finished()
    checkpointer._manager = UncachedCheckpointManager(timeout_secs=old._timeout_secs)
    return checkpointer
