"""A LoRA run's frozen base weights kept quantized in memory (``method.quantize_base: int8 | nf4``).

``QuantizedLinear`` is an equinox module that stands in for a frozen ``haliax.nn.Linear``: it holds
integer codes and float scales (``pipelines/quantize.py``) instead of the float weight, and its
``__call__`` is ``Linear.__call__`` with the weight dequantized on the fly, inside the jitted step.
``quantize_base`` swaps it in for every ``Linear`` of a loraized model except LoRA's own A and B:
the ``wrapped`` layer of each ``LoraLinear`` and the linear layers LoRA does not target. An untied
``lm_head`` stays float (as transformers/bitsandbytes keep the output layer), and so do embeddings
and norms.

Training treats the codes as frozen without help: Levanter trains only the LoRA filter's leaves and,
of those, only floating-point arrays; gradients, optimizer state and checkpoints hold none of the
base (a resumed run quantizes the base again, deterministically, from the HF checkpoint).

Layout (names keep sharding): ``int8`` codes have the float weight's own axes, scales its axes
minus ``In`` (one per output channel), so both shard exactly like the weight. ``nf4`` flattens the
input axes (blocks of 64 along them) into ``nf4_packed`` (two codes per byte) and ``nf4_blocks``
(one scale each): those axes are not in any axis mapping, so the input dimension is replicated
(output and stacked-layer axes still shard). Scales take the float weight's dtype.

``dequantize_base`` turns every ``QuantizedLinear`` back into a ``Linear`` (the export writes that
full-precision model, LoRA merged). ``base_weight_bytes`` counts what the frozen linear weights take.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
from haliax.jax_utils import named_call
from haliax.nn.mup import LinearStandardParam
from haliax.quantization import DotGeneralOp

from pipelines.quantize import KINDS, Quantized, dequantize_nf4, quantize

NF4_PACKED = "nf4_packed"
NF4_BLOCKS = "nf4_blocks"


def _axes(spec) -> tuple:
    return spec if isinstance(spec, tuple) else (spec,)


def _names(spec) -> set:
    return {a.name for a in _axes(spec)}


class QuantizedLinear(eqx.Module):
    """A frozen ``haliax.nn.Linear`` whose weight is stored quantized (see the module docstring)."""

    codes: hax.NamedArray
    scales: hax.NamedArray
    bias: hax.NamedArray | None
    In: hax.AxisSpec = eqx.field(static=True)
    Out: hax.AxisSpec = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    out_first: bool = eqx.field(static=True)
    dot_general: DotGeneralOp = eqx.field(default_factory=DotGeneralOp.default)
    _reparam_cls: type = eqx.field(static=True, default=LinearStandardParam)

    @staticmethod
    def from_linear(linear: hnn.Linear, kind: str) -> "QuantizedLinear":
        In = _axes(linear.In)
        w = linear.weight
        others = tuple(a for a in w.axes if a.name not in _names(In))  # stacked layers, Out
        rows = [a.size for a in others]
        q = quantize(w.rearrange(others + In).array.reshape(*rows, math.prod(a.size for a in In)), kind)
        scales_dtype = w.dtype
        if kind == "int8":
            codes = hax.named(q.codes.reshape(*rows, *(a.size for a in In)), others + In).rearrange(w.axes)
            scales = hax.named(q.scales[..., 0].astype(scales_dtype), others)
        else:
            codes = hax.named(q.codes, others + (hax.Axis(NF4_PACKED, q.codes.shape[-1]),))
            scales = hax.named(q.scales.astype(scales_dtype), others + (hax.Axis(NF4_BLOCKS, q.scales.shape[-1]),))
        return QuantizedLinear(codes, scales, linear.bias, linear.In, linear.Out, kind, linear._out_first,
                               linear.dot_general, linear._reparam_cls)  # fmt: skip

    @property
    def weight(self) -> hax.NamedArray:
        """The dequantized weight, axes in the original ``Linear``'s order."""
        dtype = self.scales.dtype
        if self.kind == "int8":
            return (self.codes.astype(dtype) * self.scales).rearrange(self.codes.axes)
        In = _axes(self.In)
        others = self.codes.axes[:-1]
        flat = dequantize_nf4(Quantized(self.codes.array, self.scales.array), math.prod(a.size for a in In), dtype)
        w = hax.named(flat.reshape(*(a.size for a in others), *(a.size for a in In)), others + In)
        outs = tuple(a for a in others if a.name in _names(self.Out))
        batch = tuple(a for a in others if a.name not in _names(self.Out))
        return w.rearrange(batch + (outs + In if self.out_first else In + outs))

    @property
    def reparam(self):
        return self._reparam_cls(self.In, self.Out)

    @named_call
    def __call__(self, inputs, *, key=None):
        """``haliax.nn.Linear.__call__`` on the dequantized weight. The backward pass dequantizes
        again (``_project``) instead of keeping the float weight as a residual, which without remat
        would bring back a float copy of every layer; the output keeps the name that
        ``save_linear_outputs()`` saves."""
        del key
        q = _project(self, inputs)
        q = hax.auto_sharded(q)
        if self.bias is not None:
            q = hax.auto_sharded(q + self.bias)
        return q

    def to_linear(self) -> hnn.Linear:
        return hnn.Linear(self.weight, self.bias, self.In, self.Out, dot_general=self.dot_general, _reparam_cls=self._reparam_cls)


@functools.partial(eqx.filter_checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
def _dequantized_dot(layer: "QuantizedLinear", inputs):
    return inputs.dot(layer.weight * layer.reparam.active_scale, axis=layer.In, dot_general=layer.dot_general)


def _project(layer: "QuantizedLinear", inputs):
    """``inputs · dequantize(layer)``, rematerialised: the backward pass dequantizes again rather than
    keeping the float weight (the recomputed product itself is dropped: XLA sees it unused)."""
    from jax.ad_checkpoint import checkpoint_name

    from pipelines.dot_vjp import LINEAR_OUTPUT

    out = _dequantized_dot(layer, inputs)
    return dataclasses.replace(out, array=checkpoint_name(out.array, LINEAR_OUTPUT))


def _is_linear_or_adapter(node) -> bool:
    from levanter.lora import LowRankLinear

    return isinstance(node, (hnn.Linear, LowRankLinear))


def quantize_base(model, kind: str):
    """Every frozen ``Linear`` of a loraized model (all but LoRA's A and B) as a ``QuantizedLinear``.
    Call it inside ``named_jit`` (sharded weights)."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantization {kind!r} (expected one of {', '.join(KINDS)})")

    def swap(node):
        return QuantizedLinear.from_linear(node, kind) if isinstance(node, hnn.Linear) else node

    quantized = jax.tree_util.tree_map(swap, model, is_leaf=_is_linear_or_adapter)
    if isinstance(getattr(model, "lm_head", None), hnn.Linear):  # the output layer stays float, as in bitsandbytes
        quantized = eqx.tree_at(lambda m: m.lm_head, quantized, model.lm_head)
    return quantized


@hax.named_jit
def dequantize_base(model):
    """The same model with every ``QuantizedLinear`` back as a float ``Linear`` (its dequantized weight)."""
    is_quantized = lambda n: isinstance(n, QuantizedLinear)  # noqa: E731
    return jax.tree_util.tree_map(lambda n: n.to_linear() if is_quantized(n) else n, model, is_leaf=is_quantized)


def base_weight_bytes(model) -> int:
    """Bytes the frozen linear weights take in memory: a ``QuantizedLinear``'s codes and scales, a
    plain ``Linear``'s weight; LoRA's A and B, biases, embeddings and norms are not counted."""
    from levanter.lora import LowRankLinear

    total = 0
    for node in jax.tree_util.tree_leaves(model, is_leaf=lambda n: isinstance(n, (QuantizedLinear, hnn.Linear, LowRankLinear))):
        if isinstance(node, QuantizedLinear):
            total += node.codes.array.nbytes + node.scales.array.nbytes
        elif isinstance(node, hnn.Linear):
            total += node.weight.array.nbytes
    return total


def count_quantized(model) -> int:
    leaves = jax.tree_util.tree_leaves(model, is_leaf=lambda n: isinstance(n, QuantizedLinear))
    return sum(isinstance(n, QuantizedLinear) for n in leaves)
