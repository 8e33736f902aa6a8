"""The one config of ``parsetune train``, parsed from YAML (and ``--dotted.overrides``) by draccus.

```yaml
model: models/smollm2-135m-instruct      # HF checkpoint: local dir, gs://, or hub id (org/name)
method: {type: lora, r: 8, alpha: 16}    # or {type: full}, {type: prompt_tuning, num_virtual_tokens: 20}
data: {train: runs/smollm2-lora/prep/train.jsonl, validation: runs/smollm2-lora/prep/validation.jsonl, max_seq_len: 256}
epochs: 2                                # or trainer.num_train_steps
trainer: {train_batch_size: 8, mp: "p=f32,c=f32", require_accelerator: false}
optimizer: {learning_rate: 3e-4}
run_dir: runs/smollm2-lora
```

A ``tpu:`` section (where the job runs, used by ``parsetune tpu``) may sit in the same file; the
trainer ignores it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import draccus
from levanter.optim import AdamConfig, OptimizerConfig
from levanter.trainer import TrainerConfig

from parsetune.tpu_section import TpuSection

# every linear projection of a Llama block, never lm_head/embeddings (LoRA on lm_head crashes Levanter)
DEFAULT_LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


@dataclass(frozen=True)
class MethodConfig(draccus.ChoiceRegistry):
    """How the model is trained: ``type: full``, ``type: lora`` or ``type: prompt_tuning``."""

    @classmethod
    def default_choice_name(cls) -> Optional[str]:
        return "lora"


@MethodConfig.register_subclass("full")
@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Full-weight fine-tuning: every parameter is trained."""


@MethodConfig.register_subclass("lora")
@dataclass(frozen=True)
class LoraMethodConfig(MethodConfig):
    """LoRA: low-rank adapters on the matched linear layers; B starts at zero (PEFT's init)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str = DEFAULT_LORA_TARGETS  # a regex over Levanter module paths, matched from the start
    # keep the frozen base linear weights quantized in memory, dequantized in the forward (QLoRA-style):
    # int8 (per output channel) | nf4 (4-bit NormalFloat, blocks of 64); None: float (pipelines/quantized_base.py)
    quantize_base: Optional[str] = None


PROMPT_INITS = ("text", "random")


@MethodConfig.register_subclass("prompt_tuning")
@dataclass(frozen=True)
class PromptTuningConfig(MethodConfig):
    """Prompt tuning: only ``num_virtual_tokens`` soft-prompt vectors, read before every example, are
    trained; the base model stays frozen (pipelines/prompt_tuning.py). Exported as a PEFT adapter."""

    num_virtual_tokens: int = 20
    init: str = "text"  # text: the embeddings of init_text's tokens, repeated to K (PEFT's TEXT init) | random
    init_text: str = "Turn the sentence into its meaning representation:"


@dataclass(frozen=True)
class DataConfig:
    train: str = "runs/default/prep/train.jsonl"  # prepared JSONL (parsetune prep): id, input, output
    validation: Optional[str] = "runs/default/prep/validation.jsonl"  # eval loss; None to skip
    max_seq_len: int = 256  # examples longer than this are dropped (and reported), never cut
    packing: bool = True  # several examples per sequence (attention kept within each example)
    shuffle_seed: int = 0
    max_eval_examples: Optional[int] = 256  # eval loss on at most this many validation examples


SAVE_LINEAR_OUTPUTS = "linear_outputs"


@dataclass(frozen=True)
class ComputeConfig:
    """How the model computes (None keeps Levanter's default for the model family)."""

    # true: recompute each layer in the backward pass (Levanter's default); false: keep every
    # intermediate; linear_outputs: keep the linear layers' outputs, recompute only the rest (the
    # default with transpose_free_dots; see pipelines/dot_vjp.py)
    gradient_checkpointing: Optional[Union[bool, str]] = None
    attn_backend: Optional[str] = None  # vanilla | jax_flash | splash | default (Levanter on CPU: jax_flash)
    scan_layers: Optional[bool] = None  # one scanned layer body (Levanter: on) or unrolled layers (loaded via levanter_compat)
    transpose_free_dots: Optional[bool] = None  # pipelines/dot_vjp.py's gradient for linear layers (None: on when training on CPU)

    def use_transpose_free_dots(self) -> bool:
        if self.transpose_free_dots is not None:
            return self.transpose_free_dots
        import jax

        return jax.devices()[0].platform == "cpu"

    def remat_policy(self):
        """What ``gradient_checkpointing`` means for Levanter's layers (None: keep its default)."""
        choice = self.gradient_checkpointing
        if choice is None and self.use_transpose_free_dots():
            choice = SAVE_LINEAR_OUTPUTS
        if choice == SAVE_LINEAR_OUTPUTS:
            if not self.use_transpose_free_dots():
                raise ValueError(f"gradient_checkpointing: {SAVE_LINEAR_OUTPUTS} needs transpose_free_dots (it saves what they name)")
            from pipelines.dot_vjp import save_linear_outputs

            return save_linear_outputs()
        if isinstance(choice, str):
            raise ValueError(f"gradient_checkpointing must be true, false or {SAVE_LINEAR_OUTPUTS}, not {choice!r}")
        return choice

    def apply(self, model_config):
        """The Levanter model config with these choices applied."""
        changes = {}
        policy = self.remat_policy()
        if policy is not None:
            changes["gradient_checkpointing"] = policy
        if self.scan_layers is not None:
            changes["scan_layers"] = self.scan_layers
        if self.attn_backend is not None:
            from levanter.layers.attention import AttentionBackend

            changes["attn_backend"] = AttentionBackend(self.attn_backend)
        unknown = [k for k in changes if not hasattr(model_config, k)]
        if unknown:
            raise ValueError(f"{type(model_config).__name__} has no {unknown}")
        return dataclasses.replace(model_config, **changes)


@dataclass(frozen=True)
class PrepSection:
    """Used by ``parsetune run`` only: where the data and the base model come from."""

    task: str = "viggo"  # viggo | json | viggo-json (ViGGO's MRs as JSON objects, schema learned from train)
    train: Optional[str] = None  # source files (CSV/JSONL); none: the bundled ViGGO copy (viggo, viggo-json)
    validation: Optional[str] = None
    test: Optional[str] = None
    hf: Optional[str] = None  # e.g. GEM/viggo, when the hub is reachable
    schema: Optional[str] = None  # JSON Schema for task json (kept as RUN_DIR/prep/schema.json)
    text_field: str = "text"  # task json: the source field holding the input text
    target_field: str = "json"  # task json: the source field holding the target object
    id_field: str = "id"  # task json: the row id field (optional in the source)
    instruction: Optional[str] = None  # None: the task's default instruction; "" for none
    query_template: Optional[str] = None
    few_shot: int = 0
    seed: int = 0
    base_model: Optional[str] = "smollm2"  # fetched with `parsetune prep model` when `model` is missing


@dataclass(frozen=True)
class EvalSection:
    """Used by ``parsetune run`` only: generation and scoring on held-out splits."""

    splits: list[str] = field(default_factory=lambda: ["validation"])
    batch_size: int = 16
    max_new_tokens: int = 96
    constrain: Optional[str] = "viggo"  # viggo (task viggo) | json-schema (JSON tasks) | None; a mix fails before step 1
    schema: Optional[str] = None  # JSON tasks; None: the schema the prep step writes (RUN_DIR/prep/schema.json), if any
    limit: Optional[int] = None  # first N rows only (quick runs)
    dtype: str = "auto"  # float32 | bfloat16 | auto (bfloat16 on TPU, float32 elsewhere)
    model_axis_size: int = 1  # devices per model shard (heads, kv_head, mlp); the rest shard the batch
    draft_tokens: int = 0  # prompt lookup: draft tokens checked per decode step (0: one token per step; docs/benchmarks.md)
    grounding: bool = True  # viggo: copied attributes only as spans of the row's sentence (parsetune.tasks.viggo_values)


@dataclass(frozen=True)
class TaskEvalConfig:
    """Task metrics during training (pipelines/task_eval.py): at every eval step, greedy constrained
    generation on a fixed validation subset, scored like the final evaluation."""

    examples: int = 64  # validation rows decoded at each eval step (0: off)
    batch_size: int = 32
    max_new_tokens: int = 96
    draft_tokens: int = 0


@dataclass
class TrainConfig:
    model: str = "models/smollm2-135m-instruct"  # HF checkpoint: local dir, gs://bucket/path, or hub id
    method: MethodConfig = field(default_factory=LoraMethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=AdamConfig)
    run_dir: str = "runs/default"
    epochs: Optional[float] = None  # if set, overrides trainer.num_train_steps
    export: bool = True  # write RUN_DIR/hf (and RUN_DIR/adapter for LoRA) at the end
    compute: "ComputeConfig" = field(default_factory=lambda: ComputeConfig())
    task_eval: TaskEvalConfig = field(default_factory=TaskEvalConfig)
    wandb_mode: str = "offline"  # offline | online | disabled
    tpu: Optional[TpuSection] = None  # where the job runs (parsetune tpu); ignored by training
    prep: PrepSection = field(default_factory=PrepSection)  # parsetune run only
    eval: EvalSection = field(default_factory=EvalSection)  # parsetune run only


def with_run_dir_defaults(config: TrainConfig) -> TrainConfig:
    """Point checkpoints and the tracker at RUN_DIR and turn off what a CPU run does not need."""
    from levanter.tracker.wandb import WandbConfig

    from parsetune import storage

    # Absolute for a local run dir: Levanter joins a relative base path onto itself when it deletes a
    # temporary checkpoint (runs/x/checkpoints/runs/x/checkpoints/step-N), so they would never be deleted.
    # config.run_dir itself stays as written (it is what the user sees).
    run_dir = config.run_dir if "://" in config.run_dir else os.path.abspath(config.run_dir)
    checkpointer = dataclasses.replace(
        config.trainer.checkpointer,
        base_path=storage.join(run_dir, "checkpoints"),
        append_run_id_to_base_path=False,
    )
    tracker = config.trainer.tracker
    if isinstance(tracker, WandbConfig):
        tracker = dataclasses.replace(
            tracker,
            mode=config.wandb_mode if tracker.mode is None else tracker.mode,
            project="parsetune" if tracker.project == "levanter" else tracker.project,
            save_code=False,
        )
    ray = dataclasses.replace(config.trainer.ray, auto_start_cluster=False)  # we never use Levanter's Ray cache
    trainer = dataclasses.replace(config.trainer, checkpointer=checkpointer, tracker=tracker, ray=ray)
    return dataclasses.replace(config, trainer=trainer)
