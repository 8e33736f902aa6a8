"""Checks of a parsed ``TrainConfig`` that must fail in one line before anything is written.

draccus checks types, not ranges: ``--trainer.num_train_steps -5`` parses, writes RUN_DIR/config.yaml
and then dies deep in optax; ``--epochs -1`` silently trains one step. ``check_values`` runs right
after parsing (``parse_config``), so ``train``, ``run`` and a simulated pod all refuse such a config
before any work; ``check_run_dir`` runs before the run dir is created.
"""

from __future__ import annotations

import math
import os

from parsetune import storage
from parsetune.errors import UserError
from pipelines.config import LoraMethodConfig, TrainConfig


def _at_least(name: str, value: object, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name}: {value!r}; expected an integer >= {minimum}" + (" (or null)" if optional else ""))


def _finite(name: str, value: object, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise UserError(f"{name}: {value!r}; expected a finite number {'> 0' if positive else '>= 0'}")


def check_values(config: TrainConfig) -> None:
    """Every count, size and rate the run uses is in range; else a ``UserError`` naming the key."""
    trainer = config.trainer
    if config.epochs is not None:
        _finite("epochs", config.epochs, positive=True)
    else:  # epochs, when set, replaces num_train_steps
        _at_least("trainer.num_train_steps", trainer.num_train_steps, 1)
    if isinstance(trainer.train_batch_size, int):  # Levanter also takes a schedule (a list of steps)
        _at_least("trainer.train_batch_size", trainer.train_batch_size, 1)
    _at_least("trainer.steps_per_eval", trainer.steps_per_eval, 1)
    _at_least("trainer.model_axis_size", trainer.model_axis_size, 1)
    learning_rate = getattr(config.optimizer, "learning_rate", None)
    if learning_rate is not None:
        _finite("optimizer.learning_rate", learning_rate, positive=False)
    data = config.data
    _at_least("data.max_seq_len", data.max_seq_len, 2)  # a prompt token and EOS at the least
    _at_least("data.max_eval_examples", data.max_eval_examples, 0, optional=True)
    if isinstance(config.method, LoraMethodConfig):
        _at_least("method.r", config.method.r, 1)
        if not 0 <= config.method.dropout < 1:
            raise UserError(f"method.dropout: {config.method.dropout!r}; expected 0 <= dropout < 1")
    task_eval = config.task_eval
    _at_least("task_eval.examples", task_eval.examples, 0)
    _at_least("task_eval.batch_size", task_eval.batch_size, 1)
    _at_least("task_eval.max_new_tokens", task_eval.max_new_tokens, 1)
    _at_least("task_eval.draft_tokens", task_eval.draft_tokens, 0)
    evaluation = config.eval
    _at_least("eval.batch_size", evaluation.batch_size, 1)
    _at_least("eval.max_new_tokens", evaluation.max_new_tokens, 1)
    _at_least("eval.limit", evaluation.limit, 1, optional=True)
    _at_least("eval.model_axis_size", evaluation.model_axis_size, 1)
    _at_least("eval.draft_tokens", evaluation.draft_tokens, 0)
    _at_least("prep.few_shot", config.prep.few_shot, 0)


def check_run_dir(run_dir: str) -> None:
    """A local ``run_dir`` is a directory or can become one: not a file, not below a file."""
    if storage.is_gcs(run_dir):
        return
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        kind = "a broken symbolic link" if os.path.islink(run_dir) else "a file"
        raise UserError(f"run_dir: {run_dir} is {kind}, not a directory")
    parent = os.path.dirname(os.path.abspath(run_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"run_dir: {run_dir} lies below {parent}, which is a file, not a directory")


def check_method(config: TrainConfig) -> None:
    """The method's own settings (prompt tuning's lengths, the quantized base's kind)."""
    from pipelines.config import PromptTuningConfig
    from pipelines.quantize import KINDS

    if isinstance(config.method, PromptTuningConfig):
        from pipelines.prompt_tuning import check_settings

        check_settings(config.method, config.data.max_seq_len)

    kind = getattr(config.method, "quantize_base", None)
    if kind is not None and kind not in KINDS:
        raise UserError(f"method.quantize_base: unknown quantization {kind!r} (expected {' or '.join(KINDS)}, or null for float weights)")
