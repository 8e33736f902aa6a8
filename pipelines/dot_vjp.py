"""A gradient for the linear layers that XLA:CPU runs well: no transposed copies fused into loops.

Every ``haliax.nn.Linear`` computes ``x · W`` through its ``dot_general`` field. JAX's own
gradient of that contraction asks for the weight gradient as ``dy^T · x`` (both operands contract
over the leading batch and position axes). XLA:CPU can only multiply with a transposed right-hand
side, so it transposes the left operand physically; and because that operand is usually the
output of an elementwise fusion (SiLU's backward, the LoRA sum, ...) the transpose is fused into
the loop, which then reads its inputs with a stride of a whole row: on SmolLM2 such a fusion took
~32 ms for 1.5 M elements where the same fusion without the transpose takes ~1 ms
(``bench/xla_cpu_transpose_repro.py`` shows it in a few lines). Those fusions were a quarter of a
LoRA training step.

``TransposeFreeDot`` is a drop-in ``dot_general`` (the protocol ``Linear`` accepts) with a custom
VJP. The forward is exactly ``lax.dot_general``. The backward computes:

- the input gradient ``dy · W`` as a plain matrix product, with ``W`` transposed first (a small
  standalone copy) where the contraction is the longer side: XLA:CPU's ``[m, k] · [k, n]`` runs at
  ~60% of ``[m, k] · [n, k]^T`` for shapes such as ``[1024, 1536] · [1536, 576]``;
- the weight gradient with both operands behind an optimisation barrier, so the copy XLA makes of
  one of them for its product is a plain copy, never fused into the loop that produced it.

Weights frozen by LoRA still get no gradient: XLA drops the unused product. Contractions that are
not a plain linear layer (batch dimensions, contracting axes not at the end of ``x``) use
``lax.dot_general`` unchanged. Values are identical; gradients equal autodiff's to rounding
(``tests/test_dot_vjp.py``, on one device and under tensor parallelism).

Switch: ``compute.transpose_free_dots`` (null = on when the devices are CPUs; TPU keeps Levanter's
path, where XLA:TPU assigns layouts for the MXU itself and a barrier would only block fusion).
``save_linear_outputs()`` is the remat policy that goes with it (``compute.gradient_checkpointing:
linear_outputs``). Measurements: docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

LINEAR_OUTPUT = "parsetune_linear_output"  # the name under which save_linear_outputs() keeps them


class TransposeFreeDot(eqx.Module):
    """``lax.dot_general`` whose gradient avoids transposed copies fused into loops (XLA:CPU)."""

    def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
        layout = _linear_layout(lhs.ndim, rhs.ndim, tuple(lhs_contract), tuple(rhs_contract), lhs_batch, rhs_batch)
        if layout is None:
            return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type)
        out = _linear(lhs, rhs, len(lhs_contract), layout == "out_first", precision, preferred_element_type)
        return checkpoint_name(out, LINEAR_OUTPUT)


def _linear_layout(lhs_ndim, rhs_ndim, lhs_contract, rhs_contract, lhs_batch, rhs_batch) -> str | None:
    """``"out_first"`` (W is [Out..., In...]), ``"in_first"`` ([In..., Out...]) or None (not a linear layer)."""
    k = len(lhs_contract)
    if lhs_batch or rhs_batch or k == 0 or k == rhs_ndim:
        return None
    if lhs_contract != tuple(range(lhs_ndim - k, lhs_ndim)):
        return None
    if rhs_contract == tuple(range(rhs_ndim - k, rhs_ndim)):
        return "out_first"
    if rhs_contract == tuple(range(k)):
        return "in_first"
    return None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _linear(x, w, k, out_first, precision, preferred_element_type):
    return _forward(x, w, k, out_first, precision, preferred_element_type)


def _forward(x, w, k, out_first, precision, preferred_element_type):
    w_contract = tuple(range(w.ndim - k, w.ndim)) if out_first else tuple(range(k))
    numbers = ((tuple(range(x.ndim - k, x.ndim)), w_contract), ((), ()))
    return lax.dot_general(x, w, numbers, precision=precision, preferred_element_type=preferred_element_type)


def _linear_fwd(x, w, k, out_first, precision, preferred_element_type):
    return _forward(x, w, k, out_first, precision, preferred_element_type), (x, w)


def _linear_bwd(k, out_first, precision, preferred_element_type, residuals, dy):
    x, w = residuals
    in_size = math.prod(x.shape[x.ndim - k :])
    rows = math.prod(x.shape[: x.ndim - k])
    out_size = w.size // in_size
    x2 = x.reshape(rows, in_size)
    dy2 = dy.reshape(rows, out_size).astype(x.dtype)
    w2 = w.reshape(out_size, in_size) if out_first else w.reshape(in_size, out_size)

    # input gradient dy [rows, out] · W -> [rows, in]. XLA:CPU's product is fast when the right-hand
    # side is contracted on its last axis and can be ~2x slower otherwise if the contraction is the
    # longer side (e.g. [rows, 1536] · [1536, 576]): there, transpose W (small) first.
    if not out_first:
        dx2 = _dot(dy2, w2, (1, 1), precision)
    elif out_size > in_size:
        dx2 = _dot(dy2, _standalone(jnp.transpose(w2)), (1, 1), precision)
    else:
        dx2 = _dot(dy2, w2, (1, 0), precision)

    # weight gradient: contract the rows of both. XLA:CPU copies one operand into the layout its
    # product needs; behind the barriers that copy is a plain copy of a materialised array, never a
    # strided read fused into the loop that produced dy.
    if out_first:
        dw2 = _dot(_standalone(dy2), _standalone(x2), (0, 0), precision)  # [out, in]
    else:
        dw2 = _dot(_standalone(x2), _standalone(dy2), (0, 0), precision)  # [in, out]
    return dx2.reshape(x.shape).astype(x.dtype), dw2.reshape(w.shape).astype(w.dtype)


def _dot(a, b, contract, precision):
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), precision=precision)


def _standalone(a):
    """``a`` materialised on its own: the barrier keeps XLA from fusing what follows (a layout copy,
    a transpose) into the loop that produced ``a``, or folding a transpose back into a product."""
    return lax.optimization_barrier(a)


_linear.defvjp(_linear_fwd, _linear_bwd)


def use_transpose_free_dots(model):
    """The same model with every ``haliax.nn.Linear`` (LoRA's A and B included) computing through
    ``TransposeFreeDot``. Parameters, their names and their checkpoints are unchanged."""
    import haliax.nn as hnn

    op = TransposeFreeDot()

    def swap(node):
        if isinstance(node, hnn.Linear):
            return eqx.tree_at(lambda linear: linear.dot_general, node, op)
        return node

    return jax.tree_util.tree_map(swap, model, is_leaf=lambda node: isinstance(node, hnn.Linear))


def save_linear_outputs():
    """A layer-scan checkpoint policy that keeps each linear layer's output (``LINEAR_OUTPUT``) and
    the layer's input from the forward pass and recomputes only the rest (norms, activations,
    attention) in the backward pass: no matrix product of the linear layers runs twice. Memory in
    between: SmolLM2, LoRA, one jitted value_and_grad at 8 x 128 tokens peaked at 2.0 GB with every
    layer recomputed, 3.0 GB with this policy, 4.6 GB keeping everything."""
    from haliax import ScanCheckpointPolicy

    return ScanCheckpointPolicy(save_carries=True, save_inputs=False, save_block_internals=[LINEAR_OUTPUT])
