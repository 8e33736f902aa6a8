"""Model FLOPs utilisation: the model's useful FLOP/s over the devices' peak.

- ``DEVICES``: peak dense FLOP/s and HBM **per JAX device**, from ``jax.devices()[0].device_kind``.
- ``train_flops_per_token``: model FLOPs to train on one token (full fine-tune or LoRA).
- ``step_mfu``: one training step's MFU, a pure function returning a frozen ``MfuReport``.
- ``measure_matmul_flops``: a short matmul benchmark, the only honest "peak" a CPU has.

What is counted (the PaLM paper's "model FLOPs" convention, as Levanter's ``flops_per_token``):
matmuls of the forward pass, attention over the full (unmasked) ``seq_len x seq_len`` map, plus the
lm_head; no embedding lookup, no norms; and never gradient-checkpointing recompute (that is hardware
FLOPs, not model FLOPs). Training a full model costs 3 x forward (forward, input gradients, weight
gradients). LoRA trains no base weight, so a frozen linear costs 2 x its forward (forward + input
gradient; no weight gradient); attention has no weights and stays 3 x; the adapters themselves
(``x A B``, rank r) cost 3 x their forward. The first block's input gradient, which LoRA could skip,
is counted anyway (1/num_layers of the block work).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from pipelines.model_dims import LLAMA_LINEAR_MODULES, ModelDims

GIB = 2**30


@dataclass(frozen=True)
class DeviceSpec:
    """One JAX device: a v2/v3 TensorCore (2 per chip), a v4/v5p megacore chip, a v5e/v6e chip."""

    name: str
    bf16_flops: Optional[float]  # peak dense FLOP/s per JAX device; None when unknown
    f32_flops: Optional[float]
    hbm_bytes: Optional[int]  # per JAX device
    devices_per_chip: int


# Per-chip peaks from Google's Cloud TPU documentation, one page per generation
# (cloud.google.com/tpu/docs/v2, /v3, /v4, /v5e, /v5p, /v6e: "Peak compute per chip (bf16)" and
# "HBM capacity per chip"); v2 and v3 chips hold 2 TensorCores that JAX sees as 2 devices, so
# those chip figures are halved. The MXUs multiply bf16; Google publishes no f32 peak (JAX's default
# f32 matmul precision on TPU runs bf16 passes, HIGHEST runs several), so f32 is unknown (None).
DEVICES: dict[str, DeviceSpec] = {
    "v2": DeviceSpec("TPU v2", 45e12 / 2, None, 16 * GIB // 2, 2),  # 45 TFLOP/s, 16 GiB per chip
    "v3": DeviceSpec("TPU v3", 123e12 / 2, None, 32 * GIB // 2, 2),  # 123 TFLOP/s, 32 GiB per chip
    "v4": DeviceSpec("TPU v4", 275e12, None, 32 * GIB, 1),  # 275 TFLOP/s, 32 GiB per chip
    "v5e": DeviceSpec("TPU v5e", 197e12, None, 16 * GIB, 1),  # 197 TFLOP/s, 16 GiB per chip
    "v5p": DeviceSpec("TPU v5p", 459e12, None, 95 * GIB, 1),  # 459 TFLOP/s, 95 GiB per chip
    "v6e": DeviceSpec("TPU v6e", 918e12, None, 32 * GIB, 1),  # 918 TFLOP/s, 32 GiB per chip
    # A CPU's peak depends on the part, clock and what else runs; measure it with
    # measure_matmul_flops() and pass it to step_mfu(peak_per_device=...).
    "cpu": DeviceSpec("CPU", None, None, None, 1),
}

# jax.devices()[0].device_kind (lower-cased) -> DEVICES key. libtpu reports "TPU v5 lite" for v5e,
# "TPU v5" for v5p and "TPU v6 lite" for v6e; the marketing names are accepted too.
DEVICE_KINDS = {
    "tpu v2": "v2",
    "tpu v3": "v3",
    "tpu v4": "v4",
    "tpu v5 lite": "v5e",
    "tpu v5e": "v5e",
    "tpu v5litepod": "v5e",
    "tpu v5": "v5p",
    "tpu v5p": "v5p",
    "tpu v6 lite": "v6e",
    "tpu v6e": "v6e",
    "cpu": "cpu",
}


def device_spec(device_kind: str) -> Optional[DeviceSpec]:
    """The spec of a ``jax.devices()[0].device_kind`` string, or None when unknown."""
    key = DEVICE_KINDS.get(" ".join(device_kind.lower().split()))
    return DEVICES[key] if key else None


def _dtype_name(dtype) -> str:
    import numpy as np

    if isinstance(dtype, str) and dtype.lower() in ("bf16", "bfloat16"):
        return "bfloat16"
    if isinstance(dtype, str) and dtype.lower() in ("f32", "fp32", "float32"):
        return "float32"
    import jax.numpy as jnp

    return np.dtype(jnp.dtype(dtype)).name


def peak_flops_per_device(device_kind: str, dtype="bfloat16") -> Optional[float]:
    """Peak dense FLOP/s of one device of this kind for matmuls in ``dtype``; None when unknown."""
    spec = device_spec(device_kind)
    if spec is None:
        return None
    name = _dtype_name(dtype)
    return {"bfloat16": spec.bf16_flops, "float32": spec.f32_flops}.get(name)


# --- model FLOPs ---


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs per token of a Llama decoder, by kind of work (all layers)."""

    linear: float  # q, k, v, o and the gated MLP: 2 x in x out per token per matrix
    attention: float  # q.k logits, mask/softmax, weights.v over the full seq_len x seq_len map
    lm_head: float

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.lm_head


def forward_flops_per_token(dims: ModelDims, seq_len: int) -> ForwardFlops:
    """Forward FLOPs per token; equals Levanter's ``LlamaConfig.flops_per_token`` at the same seq_len."""
    linear = dims.num_layers * sum(2 * i * o for i, o in dims.linear_shapes().values())
    per_layer_attention = seq_len * dims.num_heads * (4 * dims.head_dim + 3)  # (2+2) s h d + 3 s h, per token
    return ForwardFlops(linear, dims.num_layers * per_layer_attention, 2 * dims.hidden_dim * dims.vocab_size)


def train_flops_per_token(
    dims: ModelDims, seq_len: int, lora_rank: Optional[int] = None, lora_modules: tuple[str, ...] = LLAMA_LINEAR_MODULES
) -> float:
    """Model FLOPs to train on one token: 3 x forward for a full fine-tune; for LoRA see the module doc."""
    fwd = forward_flops_per_token(dims, seq_len)
    if lora_rank is None:
        return 3 * fwd.total
    adapters_forward = 2 * dims.num_lora_params(lora_rank, lora_modules)  # x A then (x A) B: 2 r (in + out)
    return 2 * (fwd.linear + fwd.lm_head) + 3 * fwd.attention + 3 * adapters_forward


def levanter_train_flops_per_token(model_config, vocab_size: int, seq_len: int, lora_rank: Optional[int] = None) -> float:
    """``train_flops_per_token`` for a Levanter Llama config (its own ``seq_len`` is the model's maximum,
    not the training length, so pass the training ``seq_len``)."""
    return train_flops_per_token(ModelDims.from_levanter(model_config, vocab_size), seq_len, lora_rank)


# --- MFU of one step ---


@dataclass(frozen=True)
class MfuReport:
    tokens_per_step: int
    step_seconds: float
    tokens_per_second: float
    model_flops_per_step: float
    achieved_flops_per_second: float  # model FLOPs / step time, all devices together
    peak_flops_per_second: Optional[float]  # per-device peak x devices; None when unknown
    mfu: Optional[float]  # achieved / peak; None when the peak is unknown


def step_mfu(
    tokens_per_step: int,
    step_seconds: float,
    flops_per_token: float,
    device_kind: str,
    num_devices: int,
    dtype="bfloat16",
    peak_per_device: Optional[float] = None,
) -> MfuReport:
    """MFU of one training step on ``num_devices`` devices of ``device_kind`` computing in ``dtype``.
    ``peak_per_device`` (FLOP/s) overrides the table, e.g. a measured CPU peak."""
    if step_seconds <= 0 or tokens_per_step < 0 or flops_per_token < 0 or num_devices < 1:
        raise ValueError(f"bad step: {tokens_per_step} tokens in {step_seconds} s on {num_devices} devices")
    model_flops = tokens_per_step * flops_per_token
    achieved = model_flops / step_seconds
    per_device = peak_per_device if peak_per_device is not None else peak_flops_per_device(device_kind, dtype)
    peak = per_device * num_devices if per_device else None
    return MfuReport(
        tokens_per_step=tokens_per_step,
        step_seconds=step_seconds,
        tokens_per_second=tokens_per_step / step_seconds,
        model_flops_per_step=model_flops,
        achieved_flops_per_second=achieved,
        peak_flops_per_second=peak,
        mfu=achieved / peak if peak else None,
    )


def measure_matmul_flops(n: int = 1024, dtype="float32", repeats: int = 5) -> float:
    """FLOP/s of a jitted ``n x n`` matmul on the default device (best of ``repeats``), a practical peak
    for CPUs. On a host with fake devices (``--xla_force_host_platform_device_count``) they share the
    same cores: divide by their number for a per-device figure."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype=jnp.dtype(_dtype_name(dtype)))
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
