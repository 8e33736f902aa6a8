"""Host memory while a run keeps checkpoints (levanter_compat fix 10, pipelines/checkpoint_write_cache.py).

Upstream, every checkpoint written stays in TensorStore's process-wide cache pool (up to 10 GB), so
RSS grows by one checkpoint per checkpoint. When `test_upstream_*` fails, upstream stopped caching
writes: drop `without_write_cache` then.
"""

from __future__ import annotations

import ctypes
import gc
import types

import haliax as hax
import jax
import jax.numpy as jnp
import pytest

SAVES = 10


def rss_mb() -> float:
    """Resident memory now, after returning freed heap pages to the OS (so only live memory counts)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.fixture(scope="module")
def model():
    """A small random Levanter Llama, ~130 MB in float32: RSS creeps by up to ~60 MB over the first
    saves whatever the checkpoint's size (thread pools, allocator arenas), so a checkpoint must be
    bigger than that to be told apart."""
    from levanter.models.llama import LlamaConfig, LlamaLMHeadModel

    config = LlamaConfig(seq_len=64, hidden_dim=768, intermediate_dim=1536, num_layers=4, num_heads=4, num_kv_heads=2)
    return hax.named_jit(lambda key: LlamaLMHeadModel.init(hax.Axis("vocab", 8192), config, key=key))(jax.random.PRNGKey(0))


def nbytes_mb(tree) -> float:
    return sum(x.nbytes for x in jax.tree_util.tree_leaves(tree)) / 2**20


def keep_checkpoints(base_path, model, uncached: bool) -> list[float]:
    """Save steps 1..SAVES+2, every one kept (`keep: [{every: 1}]`), each of a changed model as in
    training; RSS after each save has committed."""
    from levanter.checkpoint import CheckpointInterval, Checkpointer

    from pipelines.levanter_compat import without_write_cache

    checkpointer = Checkpointer(str(base_path), None, [CheckpointInterval(every=1)])
    if uncached:
        checkpointer = without_write_cache(checkpointer)
    rss = []
    for step in range(1, SAVES + 3):
        state = jax.tree_util.tree_map(lambda x: x + step, model)
        checkpointer.on_step(types.SimpleNamespace(step=step, state=types.SimpleNamespace(saveable_state={"model": state})))
        checkpointer.wait_until_finished()
        del state
        rss.append(rss_mb())
    assert sorted(p.name for p in base_path.iterdir()) == sorted(f"step-{s}" for s in range(1, SAVES + 3))
    return rss


def growth_over_saves(rss: list[float]) -> float:
    """RSS growth over the last SAVES saves (the first two warm up thread pools and the allocator)."""
    return rss[-1] - rss[1]


@pytest.mark.slow
def test_upstream_checkpointer_keeps_every_checkpoint_in_memory(tmp_path, model):
    rss = keep_checkpoints(tmp_path / "ckpt", model, uncached=False)
    size = nbytes_mb(model)
    assert growth_over_saves(rss) > SAVES / 2 * size, (
        f"upstream fixed: RSS {rss} grew by less than {SAVES // 2} checkpoints of {size:.0f} MB; without_write_cache may go"
    )


@pytest.mark.slow
def test_kept_checkpoints_do_not_accumulate_in_memory(tmp_path, model):
    from levanter.checkpoint import load_checkpoint

    rss = keep_checkpoints(tmp_path / "ckpt", model, uncached=True)
    size = nbytes_mb(model)
    assert growth_over_saves(rss) < size, f"RSS {rss} grew by more than one checkpoint ({size:.0f} MB) over {SAVES} kept checkpoints"
    # what was written without the cache reads back exactly
    mesh = jax.sharding.Mesh(jax.devices(), ("data",))
    path = str(tmp_path / "ckpt" / f"step-{SAVES + 2}")
    loaded = load_checkpoint({"model": model}, path, discover_latest=False, axis_mapping={}, mesh=mesh)["model"]
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(model)):
        assert jnp.array_equal(got, want + SAVES + 2)
