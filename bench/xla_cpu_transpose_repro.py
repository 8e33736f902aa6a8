"""Minimal reproducer of the XLA:CPU weakness behind slow training backward passes (issue 12).

    python bench/xla_cpu_transpose_repro.py

The weight gradient of a linear layer contracts the leading (batch, position) axes of both
operands: ``dW[out, r] = dy[b, p, out] · x[b, p, r]``. XLA:CPU's matrix product needs the left
operand's contraction last, so it transposes ``dy`` physically. When ``dy`` comes out of an
elementwise loop (here SiLU's backward, as in a Llama MLP), XLA fuses that transpose into the loop,
which then reads its inputs with a stride of a whole row. The same math with the operands behind
``lax.optimization_barrier`` makes the transpose a plain copy, or lets XLA transpose the small
operand instead. It also shows that the result order alone does not help: XLA folds a transpose
of the product back into the product's dimension numbers.

A second part times one product in the two operand orders XLA:CPU runs natively (``NN``:
``[m, k] · [k, n]``, ``NT``: ``[m, k] · [n, k]^T``): for some shapes, e.g. ``[1024, 1536] ·
[1536, 576]`` (a Llama MLP's input gradient), ``NN`` runs at ~60% of ``NT``'s speed.
Results on the development machine: docs/benchmarks.md.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax import lax


def ms(fn, *args, repeats: int = 20) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / repeats * 1e3


def silu_backward(gate, up, gate2, up2):
    """An elementwise loop of several inputs, like the MLP's backward (two LoRA paths summed)."""
    def one(g, u):
        s = jax.nn.sigmoid(g)
        return u * s * (1 + g * (1 - s))
    return one(gate, up) * 2 + one(gate2, up2)


def main() -> None:
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    b, p, out, r = 8, 128, 1536, 16
    gate, up, gate2, up2 = (jax.random.normal(k, (b, p, out)) for k in keys[:4])
    xa = jax.random.normal(keys[4], (b, p, r))
    args = (gate, up, gate2, up2, xa)

    elementwise = ms(lambda g, u, g2, u2, xa: silu_backward(g, u, g2, u2), *args)
    fused_transpose = ms(lambda g, u, g2, u2, xa: jnp.einsum("bpo,bpr->or", silu_backward(g, u, g2, u2), xa), *args)
    folded_back = ms(lambda g, u, g2, u2, xa: jnp.einsum("bpo,bpr->ro", silu_backward(g, u, g2, u2), xa).T, *args)
    barrier = ms(lambda g, u, g2, u2, xa: jnp.einsum("bpo,bpr->or", lax.optimization_barrier(silu_backward(g, u, g2, u2)),
                                                      lax.optimization_barrier(xa)), *args)
    small_first = ms(lambda g, u, g2, u2, xa: jnp.transpose(lax.optimization_barrier(
        jnp.einsum("bpr,bpo->ro", lax.optimization_barrier(xa), lax.optimization_barrier(silu_backward(g, u, g2, u2))))), *args)
    print(f"\ndW[{out},{r}] = dy^T · x, dy from an elementwise loop over [{b},{p},{out}]:")
    print(f"  the elementwise loop alone                          {elementwise:7.2f} ms")
    print(f"  dy^T · x as JAX writes it (transpose fused in loop) {fused_transpose:7.2f} ms")
    print(f"  (x^T · dy)^T (XLA folds the transpose back)         {folded_back:7.2f} ms")
    print(f"  dy^T · x with both operands behind a barrier        {barrier:7.2f} ms")
    print(f"  (x^T · dy)^T, operands and product behind barriers      {small_first:7.2f} ms")
    print(f"  -> the fused transpose costs {fused_transpose / small_first:.1f}x")

    print("\none product, the two native operand orders (GFLOP/s):")
    for m, k, n in ((1024, 576, 1536), (1024, 1536, 576), (2048, 1536, 576), (1024, 576, 192)):
        a = jax.random.normal(keys[0], (m, k))
        w_kn = jax.random.normal(keys[1], (k, n))
        w_nk = jnp.asarray(w_kn.T)
        flops = 2 * m * k * n / 1e6
        nn = ms(lambda a, w: lax.dot_general(a, w, (((1,), (0,)), ((), ()))), a, w_kn)
        nt = ms(lambda a, w: lax.dot_general(a, w, (((1,), (1,)), ((), ()))), a, w_nk)
        print(f"  [{m},{k}] · [{k},{n}]   NN {flops / nn:6.1f}   NT {flops / nt:6.1f}   NT/NN {nn / nt:.2f}x")


if __name__ == "__main__":
    main()
