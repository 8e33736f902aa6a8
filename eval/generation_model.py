"""A checkpoint ready to generate: the Levanter model sharded over a (data, model) mesh of every device.

``GenerationModel.load(model_dir, dtype, model_axis_size)`` reads a local HF checkpoint
(``eval.model_cache`` makes a gs:// one local) into the Levanter
model class of its family, with weights in ``dtype`` (``float32`` or ``bfloat16``; compute follows
the weights, logits are float32). The devices of all processes form a mesh ``data × model``: the
model axis shards attention heads, KV heads and the MLP (``heads``, ``kv_head``, ``mlp``), the data
axis shards the batch. On a multi-host pod every process runs the same calls on the same host
batch; inputs become global arrays, and each process reads the picked tokens back whole.

``prefill`` and ``step`` are the two compiled functions of greedy decoding (``eval.decoding``): the
model on ``eval.cached_model``'s cache, then a greedy pick among the tokens a packed bit mask allows
(llguidance layout, 32 tokens per int32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from parsetune.errors import UserError

DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(dtype: str) -> str:
    """``auto``: bfloat16 on TPU (half the HBM, native on the MXU), float32 elsewhere (XLA:CPU runs
    bfloat16 dots ~7x slower than float32: 580 vs 83 ms per SmolLM2 decode step here)."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    import jax

    return "bfloat16" if jax.default_backend() == "tpu" else "float32"


MODEL_AXES = ("heads", "kv_head", "mlp")  # sharded over the mesh's "model" axis


def mesh_shape(devices: int, model_axis_size: int) -> tuple[int, int]:
    if model_axis_size < 1 or devices % model_axis_size:
        raise UserError(f"--model-axis-size {model_axis_size} must divide the {devices} visible devices")
    return devices // model_axis_size, model_axis_size


@dataclass
class GenerationModel:
    model: Any  # the Levanter LmHeadModel
    mesh: Any
    mapping: dict[str, str]
    vocab_size: int
    dtype: Any

    @classmethod
    def load(cls, model_dir: str, dtype: str = "auto", model_axis_size: int = 1, soft_prompt=None) -> "GenerationModel":
        """``soft_prompt`` (``[K, hidden]``, from a prompt-tuning adapter): read before every prompt
        (``parsetune.soft_prompt``; ``eval.generate`` puts the virtual ids first)."""
        import haliax as hax
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh

        from parsetune.model_families import check_generates, converter_for_checkpoint

        dtype = resolve_dtype(dtype)
        check_generates(model_dir)
        data, model_size = mesh_shape(jax.device_count(), model_axis_size)
        converter = converter_for_checkpoint(model_dir)
        config = converter.default_config
        sizes = {"heads": config.num_heads, "kv_head": config.num_kv_heads, "mlp": config.intermediate_dim}
        bad = [f"{name} {size}" for name, size in sizes.items() if size % model_size]
        if bad:
            raise UserError(f"--model-axis-size {model_size} must divide the model's {', '.join(bad)}")
        mesh = Mesh(np.array(jax.devices()).reshape(data, model_size), ("data", "model"))
        mapping = {**{axis: "model" for axis in MODEL_AXES}, "batch": "data"}
        params = {axis: "model" for axis in MODEL_AXES}
        jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        with hax.partitioning.set_mesh(mesh), hax.axis_mapping(params):
            model = converter.load_pretrained(config.model_type, config=config, axis_mapping=params, dtype=jdtype)
            if soft_prompt is not None:
                from parsetune.soft_prompt import with_soft_prompt

                model = with_soft_prompt(model, jnp.asarray(soft_prompt, dtype=jdtype))
            model = _relayout(model)
        return cls(model, mesh, mapping, int(model.Vocab.size), jdtype)

    @classmethod
    def from_trainer(cls, model, mesh) -> "GenerationModel":
        """The trainer's model (LoRA merged, layers stacked) on the trainer's mesh (axes replica,
        data, model), ready to decode: the batch over replica × data; heads, KV heads and the MLP
        over model where their sizes divide it (else replicated)."""
        import haliax as hax
        import jax

        model_size = int(mesh.shape.get("model", 1))
        config = model.config
        sizes = {"heads": config.num_heads, "kv_head": config.num_kv_heads, "mlp": config.intermediate_dim}
        params = {axis: "model" for axis in MODEL_AXES if model_size > 1 and sizes[axis] % model_size == 0}
        batch = tuple(a for a in ("replica", "data") if a in mesh.shape)
        mapping = {**params, "batch": batch}
        with hax.partitioning.set_mesh(mesh), hax.axis_mapping(params):
            model = _relayout(model)  # compiled once per mapping: the task metrics call this at every eval
        dtype = jax.tree_util.tree_leaves(model.embeddings)[0].dtype
        return cls(model, mesh, mapping, int(model.Vocab.size), dtype)

    @property
    def data_axis_size(self) -> int:
        """Devices the batch is split over."""
        batch = self.mapping.get("batch", "data")
        return int(np.prod([self.mesh.shape[a] for a in (batch if isinstance(batch, tuple) else (batch,))]))

    def to_global(self, array: np.ndarray, axes: tuple[str, ...]):
        """A host numpy array (identical on every process) as a NamedArray on the mesh."""
        import haliax as hax
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = NamedSharding(self.mesh, PartitionSpec(*[self.mapping.get(a) for a in axes]))
        value = jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
        return hax.named(value, axes)

    def fetch(self, named) -> np.ndarray:
        """The whole value of a (possibly multi-host) array on this host."""
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() == 1:
            return np.asarray(named.array)
        return np.asarray(multihost_utils.process_allgather(named.array, tiled=True))

    def _context(self):
        import contextlib

        import haliax as hax

        stack = contextlib.ExitStack()
        stack.enter_context(hax.partitioning.set_mesh(self.mesh))
        stack.enter_context(hax.axis_mapping(self.mapping))
        return stack

    def init_cache(self, batch: int, slots: int):
        import haliax as hax

        from eval.cached_model import KvCache

        if batch % self.data_axis_size:
            raise UserError(f"--batch-size {batch} must be a multiple of the data axis ({self.data_axis_size} devices)")
        key = (batch, slots, str(self.dtype), tuple(sorted(self.mapping.items())))
        if key not in _ZERO_CACHES:  # one compiled function per shape and layout, not one per batch or model
            zeros = lambda m: hax.shard(KvCache.zeros(m, batch, slots, self.dtype))  # noqa: E731
            _ZERO_CACHES[key] = hax.named_jit(zeros, axis_resources=self.mapping)
        with self._context():
            return _ZERO_CACHES[key](self.model)

    def prefill(self, tokens_BxT: np.ndarray, pad_B: np.ndarray, cache, bitmask_BxW: np.ndarray, sampling=None):
        """Fill cache slots ``[0, T)``; each row's first pick (global ``[batch]``) and the cache.
        ``sampling`` (``eval.sampling.Sampling``): per-row temperature / top-p draws instead of greedy picks."""
        with self._context():
            args = (
                self.model,
                self.to_global(tokens_BxT, ("batch", "position")),
                self.to_global(pad_B, ("batch",)),
                cache,
                self.to_global(bitmask_BxW, ("batch", "mask_word")),
            )
            if sampling is None:
                return _prefill(*args)
            return _prefill_sampled(*args, *self._sampling_args(sampling, 0))

    def step(
        self, tokens_BxT: np.ndarray, pad_B: np.ndarray, start_B: np.ndarray, cache, bitmask_BxTxW: np.ndarray,
        sampling=None, step: int = 1,
    ):  # fmt: skip
        """Feed ``T`` tokens per row, row ``b`` at cache slots ``start_B[b] ..``; the pick after each
        of them (global ``[batch, position]``: the next token, then the checks of draft tokens) and the cache.
        With ``sampling``, the picks are draws (``step`` numbers the draw, for its random key)."""
        with self._context():
            args = (
                self.model,
                self.to_global(tokens_BxT, ("batch", "position")),
                self.to_global(pad_B, ("batch",)),
                self.to_global(start_B, ("batch",)),
                cache,
                self.to_global(bitmask_BxTxW, ("batch", "position", "mask_word")),
            )
            if sampling is None:
                return _step(*args)
            return _step_sampled(*args, *self._sampling_args(sampling, step))

    def _sampling_args(self, sampling, step: int) -> tuple:
        return (
            self.to_global(sampling.temperature_B, ("batch",)),
            self.to_global(sampling.top_p_B, ("batch",)),
            self.to_global(sampling.step_seeds(step), ("batch",)),
        )


def _pick(logits, bitmask):
    """Greedy choice among the tokens whose bit is set in the packed mask (``[..., mask_word]``)."""
    import haliax as hax
    import jax.numpy as jnp

    vocab = jnp.arange(logits.resolve_axis("vocab").size)
    axes = tuple(a for a in bitmask.axes if a.name != "mask_word")
    words = bitmask.rearrange((*axes, "mask_word")).array
    allowed = (words[..., vocab // 32] >> (vocab % 32)) & 1
    scores = jnp.where(allowed == 1, logits.rearrange((*axes, "vocab")).array, -jnp.inf)
    return hax.named(jnp.argmax(scores, axis=-1).astype(jnp.int32), axes)


def _prefill_fn(model, tokens, pad, cache, bitmask):
    import haliax as hax

    from eval.cached_model import forward_cached

    start = hax.zeros_like(pad)
    logits, cache = forward_cached(model, tokens, pad, start, cache, last_only=True)
    return _pick(logits, bitmask), cache


def _step_fn(model, tokens, pad, start, cache, bitmask):
    from eval.cached_model import forward_cached

    logits, cache = forward_cached(model, tokens, pad, start, cache, last_only=False)
    return _pick(logits, bitmask), cache


def _prefill_sampled_fn(model, tokens, pad, cache, bitmask, temperature, top_p, seed):
    import haliax as hax

    from eval.cached_model import forward_cached
    from eval.sampling import sample_pick

    logits, cache = forward_cached(model, tokens, pad, hax.zeros_like(pad), cache, last_only=True)
    return sample_pick(logits, bitmask, temperature, top_p, seed), cache


def _step_sampled_fn(model, tokens, pad, start, cache, bitmask, temperature, top_p, seed):
    from eval.cached_model import forward_cached
    from eval.sampling import sample_pick

    logits, cache = forward_cached(model, tokens, pad, start, cache, last_only=False)
    return sample_pick(logits, bitmask, temperature, top_p, seed), cache


def _jit(fn, donate):
    """``haliax.named_jit`` under the mesh and axis mapping in context at call time."""
    import haliax as hax

    compiled: dict = {}

    def call(*args):
        mapping = hax.partitioning.current_thread_local_mapping()
        key = tuple(sorted(mapping.items()))
        if key not in compiled:
            compiled[key] = hax.named_jit(fn, axis_resources=mapping, donate_args=donate)
        return compiled[key](*args)

    return call


def _decode_layout_fn(model):
    from eval.cached_model import decode_layout

    return decode_layout(model)


_ZERO_CACHES: dict = {}  # (batch, slots, dtype, mapping) -> compiled cache init
_relayout = _jit(_decode_layout_fn, (False,))
_prefill = _jit(_prefill_fn, (False, False, False, True, False))
_step = _jit(_step_fn, (False, False, False, False, True, False))
_prefill_sampled = _jit(_prefill_sampled_fn, (False, False, False, True, False, False, False, False))
_step_sampled = _jit(_step_sampled_fn, (False, False, False, False, True, False, False, False, False))
