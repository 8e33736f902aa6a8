"""``parsetune export``: turn any saved training step (RUN_DIR/checkpoints/step-N) into a merged
HF checkpoint (and, for LoRA, a PEFT adapter), using the run's own config.yaml to rebuild the model."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import jax

from parsetune import storage
from parsetune.errors import UserError
from pipelines.config import LoraMethodConfig, TrainConfig


def run_config_for(checkpoint: str, config_path: str | None) -> TrainConfig:
    """The config saved beside the checkpoints (RUN_DIR/config.yaml) unless one is given."""
    if config_path is None:
        run_dir = os.path.dirname(os.path.dirname(checkpoint.rstrip("/")))
        config_path = storage.join(run_dir, "config.yaml")
    if not storage.exists(config_path):
        raise UserError(f"{config_path}: no run config found; pass --config RUN_DIR/config.yaml")
    from pipelines.train import parse_config

    return parse_config(config_path, [])


@contextlib.contextmanager
def trained_model(checkpoint: str, config_path: str | None = None):
    """Inside a Levanter trainer context: yields ``(model, converter, config, completed_steps)`` of a
    saved training step, rebuilt from the run's config (base model, LoRA structure) + the checkpoint."""
    import levanter
    from levanter.models.lm_model import compute_next_token_loss
    from levanter.trainer import Trainer

    from parsetune.model_families import converter_for_checkpoint
    from pipelines.model_loading import load_model
    from pipelines.train import quiet_library_logs

    if not storage.exists(storage.join(checkpoint, "metadata.json")):
        raise UserError(f"{checkpoint}: not a Levanter checkpoint (no metadata.json); expected RUN_DIR/checkpoints/step-N")
    config = run_config_for(checkpoint, config_path)
    trainer_config = dataclasses.replace(
        config.trainer,
        load_checkpoint_path=checkpoint,
        load_checkpoint=True,
        id=(config.trainer.id or "run") + "-export",
        tracker=levanter.tracker.NoopConfig(),
    )
    from parsetune import distributed

    config = dataclasses.replace(config, trainer=distributed.initialize(trainer_config))  # a pod exports together
    run_dir = os.path.dirname(os.path.dirname(checkpoint.rstrip("/")))  # RUN_DIR/checkpoints/step-N
    with contextlib.ExitStack() as held:
        if distributed.is_chief() and storage.exists(storage.join(run_dir, "config.yaml")):
            from parsetune.run_lock import run_dir_lock

            held.enter_context(run_dir_lock(run_dir, "export"))  # not while a train or run writes into it
        levanter.initialize(config)
        quiet_library_logs()
        converter = converter_for_checkpoint(config.model)
        optimizer = config.optimizer.build(config.trainer.num_train_steps)
        with Trainer(config.trainer, optimizer, loss_fn=compute_next_token_loss, add_default_hooks=False) as trainer:
            model, is_trainable = load_model(config, converter, trainer)
            state = trainer.initial_state(jax.random.PRNGKey(config.trainer.seed), model=model, is_trainable=is_trainable)
            if int(state.step) == 0:
                raise UserError(f"{checkpoint}: checkpoint could not be loaded (state is at step 0)")
            yield state.model, converter, config, int(state.step)


def export_checkpoint(checkpoint: str, out_dir: str, config_path: str | None = None, adapter_dir: str | None = None) -> int:
    """Load ``checkpoint`` into the run's model and write ``out_dir`` (merged HF; for prompt tuning the
    PEFT prompt-tuning adapter); returns the number of
    completed training steps in it (Levanter's ``step-N`` holds the state after N + 1 steps)."""
    from pipelines.export import check_export_targets, export_merged_hf, export_peft_adapter
    from parsetune.hf_files import read_hf_config
    from pipelines.model_loading import lora_config_of

    if storage.exists(storage.join(checkpoint, "metadata.json")):  # else trained_model says what is wrong
        inputs = (checkpoint, config_path, run_config_for(checkpoint, config_path).model)
        check_export_targets(out_dir, adapter_dir, inputs=inputs)  # before any loading: never replace a user's files
    with trained_model(checkpoint, config_path) as (model, converter, config, step):
        from pipelines.config import PromptTuningConfig

        if isinstance(config.method, PromptTuningConfig):  # no weights to merge: the soft prompt is the export
            from pipelines.export import export_prompt_adapter

            marker = {"completed_steps": step, "base_model": config.model, "method": "prompt_tuning", "checkpoint": checkpoint}
            export_prompt_adapter(model, config.model, converter.tokenizer, out_dir, marker)
            return step
        is_lora = isinstance(config.method, LoraMethodConfig)
        marker = {"completed_steps": step, "base_model": config.model, "method": "lora" if is_lora else "full", "checkpoint": checkpoint}
        export_merged_hf(model, converter, config.model, out_dir, marker, is_lora)
        if is_lora and adapter_dir:
            model_type = read_hf_config(config.model)["model_type"]
            export_peft_adapter(model, lora_config_of(config.method), config.model, model_type, converter.tokenizer, adapter_dir, marker)
    return step
