"""The model a run trains: the base HF checkpoint in Levanter form, loraized (B = 0) for LoRA, with
its initial soft prompt for prompt tuning.
Shared by ``parsetune train`` and ``parsetune export`` (which rebuilds the same structure)."""

from __future__ import annotations

import dataclasses

import haliax as hax
import jax

from parsetune.errors import UserError
from pipelines.config import FullConfig, LoraMethodConfig, PromptTuningConfig, TrainConfig


def load_model(config: TrainConfig, converter, trainer):
    """The base HF model in Levanter form, loraized (B = 0) for LoRA; plus the trainable filter."""
    from levanter.lora import lora_trainable_params_filter

    from pipelines.levanter_compat import count_lora_modules, loraize_from_base, unroll_layers

    try:
        lev_config = config.compute.apply(converter.default_config)
    except ValueError as err:
        raise UserError(f"compute: {err}") from err
    unrolled = getattr(lev_config, "scan_layers", True) is False
    if unrolled:  # Levanter cannot load unrolled layers itself (see levanter_compat)
        lev_config = dataclasses.replace(lev_config, scan_layers=True)
    model = converter.load_pretrained(
        lev_config.model_type, config=lev_config, axis_mapping=trainer.parameter_axis_mapping, dtype=trainer.mp.param_dtype
    )
    if unrolled:
        model = unroll_layers(model)
    if isinstance(config.method, FullConfig):
        return with_compute_choices(model, config), True
    if isinstance(config.method, PromptTuningConfig):
        from pipelines.prompt_tuning import with_trainable_prompt

        return with_trainable_prompt(with_compute_choices(model, config), config.method, converter.tokenizer, config.trainer.seed + 1)
    lora = lora_config_of(config.method)
    key = jax.random.PRNGKey(config.trainer.seed + 1)
    model = hax.named_jit(lambda m: loraize_from_base(m, lora, key), axis_resources=trainer.parameter_axis_mapping)(model)
    if count_lora_modules(model) == 0:
        raise UserError(f"method.target_modules {config.method.target_modules!r} matches no linear layer of {config.model}")
    model = with_compute_choices(model, config)  # LoRA's own A and B layers too
    if config.method.quantize_base:
        from pipelines.quantized_base import quantize_base

        kind = config.method.quantize_base  # the float weights are freed once quantized (no reference is kept)
        model = hax.named_jit(lambda m: quantize_base(m, kind), axis_resources=trainer.parameter_axis_mapping)(model)
    return model, lora_trainable_params_filter(model)


def with_compute_choices(model, config: TrainConfig):
    """The model with the ``compute:`` choices that are not Levanter config fields applied."""
    if config.compute.use_transpose_free_dots():
        from pipelines.dot_vjp import use_transpose_free_dots

        model = use_transpose_free_dots(model)
    return model


def lora_config_of(method: LoraMethodConfig):
    from levanter.lora import LoraConfig

    return LoraConfig(target_modules=method.target_modules, r=method.r, alpha=method.alpha, dropout=method.dropout)
