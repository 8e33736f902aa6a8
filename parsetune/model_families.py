"""The model families parsetune trains and evaluates, and the HF<->Levanter converter for a checkpoint.

A family is an HF ``model_type``. Every family in ``TRAINABLE`` trains and exports; the ones in
``GENERATES`` are also evaluated by ``parsetune eval generate``, which runs the same Levanter
model classes with a KV cache around their ``Attention`` layers (``eval.cached_model``). GPT-2's
attention is a different module (learned positions, fused QKV), so GPT-2 trains but does not
generate; ``parsetune run`` says so before it trains (``check_generates``).

``converter_for_checkpoint`` holds three fixes for the pinned Levanter (tests in
``tests/test_levanter_compat.py``): ``HFCheckpointConverter.from_hf`` instantiates every model's
default *hub* checkpoint to choose the config class, so it fails offline even for a local path: we
choose the class from the checkpoint's own ``config.json``; local paths are made absolute, since
Levanter treats a relative path that looks like ``org/name`` as a hub repo id and spends ~1 minute in
network retries before it reads the local files; and Levanter's ``QwenConfig.from_hf_config`` reads
``hf_config.no_bias``, which transformers' ``Qwen2Config`` does not define (so no real Qwen2
checkpoint loads): a Qwen2 MLP has no biases, so a config without it gets ``no_bias = True``.
"""

from __future__ import annotations

import os

from parsetune import storage
from parsetune.errors import UserError
from parsetune.hf_files import check_weights, read_hf_config

GENERATES: tuple[str, ...] = ("llama", "mistral", "qwen2")
TRAINABLE: tuple[str, ...] = GENERATES + ("gpt2",)


def levanter_config_classes() -> dict:
    """HF ``model_type`` -> Levanter config class, for the decoder families we support."""
    from levanter.models.gpt2 import Gpt2Config
    from levanter.models.llama import LlamaConfig
    from levanter.models.mistral import MistralConfig
    from levanter.models.qwen import QwenConfig

    return {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": QwenConfig, "gpt2": Gpt2Config}


def model_type_of(model_dir: str) -> str:
    return str(read_hf_config(model_dir).get("model_type"))


def check_generates(model_dir: str) -> None:
    """One line, before any work, when ``eval generate`` cannot run this checkpoint's family."""
    model_type = model_type_of(model_dir)
    if model_type not in GENERATES:
        trains = " (it trains and exports, but cannot be evaluated)" if model_type in TRAINABLE else ""
        raise UserError(
            f"{model_dir}: generation does not support model_type {model_type!r}{trains}; "
            f"supported: {', '.join(GENERATES)}"
        )


def converter_for_checkpoint(model_dir: str):
    """An HF<->Levanter converter for a local (or gs://) checkpoint, without touching the hub. A
    truncated local weight file is a one-line error here, before a caller writes anything."""
    import transformers
    from levanter.compat.hf_checkpoints import HFCheckpointConverter

    if not storage.is_gcs(model_dir) and os.path.isdir(model_dir):
        model_dir = os.path.abspath(model_dir)
    hf = read_hf_config(model_dir)
    check_weights(model_dir)
    model_type = hf.get("model_type")
    classes = levanter_config_classes()
    if model_type not in classes:
        raise UserError(f"{model_dir}: model_type {model_type!r} is not supported (supported: {', '.join(classes)})")
    hf_config_class = transformers.AutoConfig.for_model(model_type).__class__
    converter = HFCheckpointConverter(
        classes[model_type], reference_checkpoint=model_dir, HfConfigClass=hf_config_class, tokenizer=model_dir
    )
    if model_type == "qwen2" and "no_bias" not in hf:
        converter.default_hf_config.no_bias = True  # read by QwenConfig.from_hf_config (-> default_config)
    return converter
