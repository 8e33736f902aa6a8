"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=N: load a checkpoint with tensor
parallelism and print, as JSON, how each parameter is sharded over the mesh axes."""

from __future__ import annotations

import json
import sys

import jax
import optax
from levanter.trainer import Trainer, TrainerConfig

from pipelines.config import FullConfig, LoraMethodConfig, TrainConfig
from parsetune.model_families import converter_for_checkpoint
from pipelines.model_loading import load_model


def main(model_dir: str, model_axis_size: int, axes: list[str], method: str) -> None:
    from levanter.tracker import NoopConfig

    trainer_config = TrainerConfig(
        id="tp-probe", tracker=NoopConfig(), require_accelerator=False, model_axis_size=model_axis_size,
        tensor_parallel_axes=axes, train_batch_size=4,
    )
    # method: full | lora | lora-int8 | lora-nf4 (LoRA on a quantized base)
    lora = LoraMethodConfig(quantize_base=method.split("-", 1)[1] if "-" in method else None)
    config = TrainConfig(model=model_dir, trainer=trainer_config, method=FullConfig() if method == "full" else lora)
    converter = converter_for_checkpoint(model_dir)

    with Trainer(trainer_config, optax.sgd(0.1), loss_fn=lambda *a, **k: 0.0, add_default_hooks=False) as trainer:
        model, _ = load_model(config, converter, trainer)
        specs = {}
        paths = jax.tree_util.tree_flatten_with_path(model, is_leaf=lambda x: hasattr(x, "array") and hasattr(x, "axes"))[0]
        for path, leaf in paths:
            if not hasattr(leaf, "axes"):
                continue
            name = jax.tree_util.keystr(path)
            spec = leaf.array.sharding.spec
            specs[name] = {"axes": [a.name for a in leaf.axes], "spec": [s if s is None or isinstance(s, str) else list(s) for s in spec]}
        print(json.dumps({"devices": jax.device_count(), "mesh": dict(trainer.device_mesh.shape), "params": specs}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4])
