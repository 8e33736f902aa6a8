"""Fixes for the pinned Levanter (1.2.dev1644), each small and proven by a test in
``tests/test_levanter_compat.py`` that also checks the upstream bug is still there (so we learn
when an upgrade makes a fix unnecessary).

1. ``converter_for_checkpoint`` (in ``parsetune.model_families``, shared with ``eval``):
   ``HFCheckpointConverter.from_hf`` instantiates every model's default *hub* checkpoint to choose
   the config class, so it fails offline even for a local path. We choose the class from the
   checkpoint's own ``config.json`` ``model_type``.
2. ``loraize_from_base``: ``LowRankLinear.init`` draws both LoRA matrices at random, so a freshly
   loraized model is not the pretrained model. PEFT starts B at zero; so do we.
3. ``merge_lora``: ``LoraLinear.merge`` returns the merged weight with its axes flipped
   (``In, Out`` instead of the wrapped layer's order), so merged HF exports come out transposed.
   We keep the wrapped weight's axis order.
5. ``converter_for_checkpoint`` also makes local paths absolute: Levanter treats a relative path
   that looks like ``org/name`` (``models/smollm2``) as a hub repo id first and spends ~1 minute
   in network retries before it reads the local files.
4. ``peft_prefix``: ``save_peft_pretrained`` defaults to GPT-2's key prefix
   (``base_model.model.transformer``); PEFT loads a Llama adapter saved that way as a silent no-op.
6. ``unroll_layers`` / ``restack_layers``: with ``scan_layers: false`` the model holds its layers in
   a ``BlockSeq``, whose ``from_state_dict`` calls ``block.from_state_dict`` on layers that do not
   have it (``LlamaDecoderLayer``), so an unrolled model cannot be loaded from an HF checkpoint.
   We load the stacked model and split it into a ``BlockSeq``; exports stack it back.
   (Unrolled layers were no faster here and peaked at 17 GB; see docs/benchmarks.md.)
7. ``tracker_for_host`` / ``join_tracker_broadcast``: on a multi-host run, ``WandbConfig.init``
   runs W&B in ``offline`` mode on every host but process 0, so each host writes its own W&B run
   (into the same run dir). We give those hosts a no-op tracker; since process 0's W&B init waits
   at a broadcast that every host must join, the others join it once themselves.
8. ``save_forced_checkpoint``: ``Checkpointer.on_step(force=True)`` still applies the time rule, so a
   forced (final) save made after ``save_interval`` has elapsed is *temporary*; when the same step was
   just saved as a temporary checkpoint, its commit callback then deletes that step-N: the run ends
   with no checkpoint at all. A forced save is permanent here.
9. ``converter_for_checkpoint`` also gives a Qwen2 config without ``no_bias`` ``no_bias = True``:
   Levanter's ``QwenConfig.from_hf_config`` reads ``hf_config.no_bias``, which transformers'
   ``Qwen2Config`` does not define, so no Qwen2 checkpoint loads (a Qwen2 MLP has no biases).
10. ``without_write_cache`` (``pipelines/checkpoint_write_cache.py``, its test in
   ``tests/test_checkpoint_memory.py``): the ``Checkpointer`` writes through JAX's
   ``GlobalAsyncCheckpointManager``, whose process-wide TensorStore context caches every written
   chunk (up to 10 GB), so host memory grows by one checkpoint per checkpoint. We write with no cache.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import haliax as hax
import jax
from levanter.lora import LoraConfig, LoraLinear, LowRankLinear, loraize

from pipelines.checkpoint_write_cache import without_write_cache  # noqa: F401  (fix 10)



def _zero_lora_b(module):
    if isinstance(module, LowRankLinear):
        b = module.lora_B
        return dataclasses.replace(module, lora_B=dataclasses.replace(b, weight=hax.zeros_like(b.weight)))
    return module


def loraize_from_base(model, config: LoraConfig, key):
    """``loraize``, then B := 0 so that the loraized model computes exactly the base model."""
    model = loraize(model, config, key=key)
    return jax.tree_util.tree_map(_zero_lora_b, model, is_leaf=lambda n: isinstance(n, LowRankLinear))


def _merge_keep_axes(module):
    if isinstance(module, LoraLinear):
        from pipelines.quantized_base import QuantizedLinear

        if isinstance(module.wrapped, QuantizedLinear):  # a quantized base (method.quantize_base) merges in float
            module = dataclasses.replace(module, wrapped=module.wrapped.to_linear())
        merged = module.merge()
        return dataclasses.replace(merged, weight=merged.weight.rearrange(module.wrapped.weight.axes))
    return module


@hax.named_jit
def merge_lora(model):
    """Fold every LoRA adapter into its wrapped weight, keeping the wrapped weight's axis order.
    A quantized wrapped layer is dequantized first (other quantized layers stay as they are)."""
    return jax.tree_util.tree_map(_merge_keep_axes, model, is_leaf=lambda n: isinstance(n, LoraLinear))


PEFT_PREFIXES = {"gpt2": "base_model.model.transformer"}


def peft_prefix(model_type: str) -> str:
    """The state-dict key prefix PEFT expects for an adapter on this model family."""
    return PEFT_PREFIXES.get(model_type, "base_model.model")


def count_lora_modules(model) -> int:
    leaves = jax.tree_util.tree_leaves(model, is_leaf=lambda n: isinstance(n, LoraLinear))
    return sum(isinstance(n, LoraLinear) for n in leaves)


def unroll_layers(model):
    """A model whose transformer layers are ``Stacked`` (one scanned body) -> the same weights as a
    ``BlockSeq`` (one traced copy per layer). Anything else is returned unchanged."""
    from haliax.nn.scan import BlockSeq, Stacked

    layers = model.transformer.layers
    if not isinstance(layers, Stacked):
        return model
    unrolled = BlockSeq(list(layers.unstacked()), layers.Block, gradient_checkpointing=layers.gradient_checkpointing)
    return eqx.tree_at(lambda m: m.transformer.layers, model, unrolled)


def restack_layers(model):
    """Inverse of ``unroll_layers`` (exports and PEFT adapters are written from the stacked form)."""
    from haliax.nn.scan import BlockSeq, Stacked

    layers = model.transformer.layers
    if not isinstance(layers, BlockSeq):
        return model
    is_named = lambda x: isinstance(x, hax.NamedArray)  # noqa: E731
    stacked = jax.tree_util.tree_map(
        lambda *xs: hax.stack(layers.Block, xs) if is_named(xs[0]) else jax.numpy.stack(xs), *layers.blocks, is_leaf=is_named
    )
    restacked = Stacked(stacked, layers.Block, gradient_checkpointing=layers.gradient_checkpointing)
    return eqx.tree_at(lambda m: m.transformer.layers, model, restacked)


def tracker_for_host(tracker):
    """The tracker config this host should initialise: the run's own on process 0, a no-op elsewhere."""
    import levanter.tracker

    if jax.process_index() == 0:
        return tracker
    return levanter.tracker.NoopConfig()


def join_tracker_broadcast(chief_tracker) -> None:
    """On hosts other than process 0: join the one broadcast that process 0's W&B init performs."""
    from levanter.tracker.wandb import WandbConfig
    from levanter.utils.jax_utils import multihost_broadcast_sync

    if jax.process_count() > 1 and jax.process_index() != 0 and isinstance(chief_tracker, WandbConfig):
        multihost_broadcast_sync(None, is_source=False)


def save_forced_checkpoint(checkpointer, info) -> None:
    """``checkpointer.on_step(info, force=True)`` as a permanent save, whatever the time policy says."""
    interval, checkpointer.save_interval = checkpointer.save_interval, None
    try:
        checkpointer.on_step(info, force=True)
    finally:
        checkpointer.save_interval = interval
