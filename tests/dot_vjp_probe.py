"""Gradients of the training loss with and without ``pipelines/dot_vjp.py``, on whatever devices
this process has (run under XLA_FLAGS=--xla_force_host_platform_device_count=N for a fake mesh).

    python tests/dot_vjp_probe.py MODEL_DIR MODEL_AXIS_SIZE lora|full

Prints one JSON line: the loss both ways, the largest gradient difference relative to the largest
gradient, how many linear layers computed through TransposeFreeDot, and the mesh."""

from __future__ import annotations

import dataclasses
import json
import sys

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from levanter.layers.attention import AttentionMask
from levanter.models.lm_model import LmExample
from levanter.trainer import Trainer, TrainerConfig

from pipelines.config import ComputeConfig, FullConfig, LoraMethodConfig, TrainConfig
from pipelines.dot_vjp import TransposeFreeDot
from pipelines.loss import training_loss
from pipelines.model_loading import load_model
from parsetune.model_families import converter_for_checkpoint


def count_transpose_free(model) -> int:
    import haliax.nn as hnn

    linears = jax.tree_util.tree_leaves(model, is_leaf=lambda node: isinstance(node, hnn.Linear))
    return sum(isinstance(getattr(node, "dot_general", None), TransposeFreeDot) for node in linears)


def gradients(config: TrainConfig, converter, trainer, example, positions_per_row: int):
    model, trainable = load_model(config, converter, trainer)
    params, rest = eqx.partition(model, trainable)
    params, frozen_params = eqx.partition(params, eqx.is_inexact_array)
    loss_fn = training_loss(positions_per_row)

    @eqx.filter_jit
    def value_and_grad(params, frozen_params, rest, example):
        return jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, frozen_params, rest), example).array)(params)

    with hax.axis_mapping(trainer.compute_axis_mapping):
        loss, grads = value_and_grad(params, frozen_params, rest, example)
    return float(loss), [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)], count_transpose_free(model)


def main(model_dir: str, model_axis_size: int, method: str) -> None:
    from levanter.tracker import NoopConfig

    trainer_config = TrainerConfig(
        id="dot-vjp-probe", tracker=NoopConfig(), require_accelerator=False, model_axis_size=model_axis_size,
        tensor_parallel_axes=["mlp", "heads", "kv_head"], train_batch_size=4,
    )
    base = TrainConfig(model=model_dir, trainer=trainer_config,
                       method=LoraMethodConfig(r=4, alpha=8) if method == "lora" else FullConfig())
    converter = converter_for_checkpoint(model_dir)
    rng = np.random.default_rng(0)
    Batch, Pos = hax.Axis("batch", 4), hax.Axis("position", 32)
    tokens = rng.integers(3, len(converter.tokenizer), (4, 32))
    loss_mask = np.zeros((4, 32), np.int32)
    loss_mask[:, 12:] = 1
    results = {}
    with Trainer(trainer_config, optax.sgd(0.1), loss_fn=lambda *a, **k: 0.0, add_default_hooks=False) as trainer:
        example = LmExample(tokens=hax.named(jnp.asarray(tokens, jnp.int32), (Batch, Pos)),
                            loss_mask=hax.named(jnp.asarray(loss_mask), (Batch, Pos)), attn_mask=AttentionMask.causal())
        for switch in (False, True):
            config = dataclasses.replace(base, compute=ComputeConfig(transpose_free_dots=switch))
            results[switch] = gradients(config, converter, trainer, example, positions_per_row=32)
        mesh = dict(trainer.device_mesh.shape)
    (plain_loss, plain, plain_count), (ours_loss, ours, ours_count) = results[False], results[True]
    scale = max(float(np.abs(g).max()) for g in plain)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(plain, ours))
    print(json.dumps({"plain_loss": plain_loss, "loss": ours_loss, "relative_grad_diff": worst / scale, "grad_scale": scale,
                      "leaves": len(plain), "transpose_free_linears": ours_count, "plain_transpose_free_linears": plain_count,
                      "devices": jax.device_count(), "mesh": mesh}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
