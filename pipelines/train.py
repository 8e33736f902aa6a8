"""``parsetune train``: fine-tune an HF checkpoint with Levanter's Trainer (full weights or LoRA).

Run directory contract (RUN_DIR may be gs://):
  config.yaml      the resolved config
  checkpoints/     Levanter checkpoints (``step-N``); rerunning the same command resumes exactly
  metrics.jsonl    per step: step, train_loss, tokens (real, non-pad), tokens_per_s; eval_loss rows
  hf/              the final merged HF checkpoint (only once the export finished; not for prompt tuning)
  adapter/         LoRA: the PEFT adapter; prompt tuning: the PEFT prompt-tuning adapter (its only export)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import sys
from dataclasses import dataclass

import draccus
from draccus.utils import DecodingError
import haliax as hax
import jax
import numpy as np

from parsetune import storage
from parsetune.errors import UserError
from pipelines.config import LoraMethodConfig, TrainConfig, with_run_dir_defaults
from pipelines.data import LengthReport, PackedSequences, drop_too_long, epoch_order, pack, read_prepared, shuffled, tokenize_rows
from pipelines.model_loading import load_model, lora_config_of

logger = logging.getLogger("parsetune.train")


@dataclass(frozen=True)
class PreparedData:
    train: PackedSequences
    validation: PackedSequences | None
    train_report: LengthReport
    num_steps: int


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    steps: int
    final_train_loss: float | None
    final_eval_loss: float | None
    exported: bool


def say(message: str) -> None:
    print(f"[parsetune train] {message}", file=sys.stderr, flush=True)


def tokenized_split(path: str, tokenizer, max_seq_len: int, split: str, prefix: tuple[int, ...] = ()):
    """``prefix``: token ids put before every prompt (prompt tuning's virtual tokens)."""
    rows = read_prepared(path)
    examples = tokenize_rows(rows, tokenizer, tokenizer.eos_token_id)
    if prefix:
        from pipelines.prompt_tuning import check_prompt_lengths

        examples = [dataclasses.replace(e, prompt=prefix + e.prompt) for e in examples]
        check_prompt_lengths(examples, len(prefix), max_seq_len, path)
    kept, report = drop_too_long(examples, max_seq_len)
    if report.dropped:
        say(report.message(path))
    if not kept:
        raise UserError(f"{path}: every {split} example is longer than data.max_seq_len={max_seq_len}")
    return kept, report


def prepare_data(config: TrainConfig, tokenizer, verbose: bool = True, prefix: tuple[int, ...] = ()) -> PreparedData:
    data = config.data
    if tokenizer.eos_token_id is None:
        raise UserError(f"{config.model}: tokenizer has no EOS token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train, report = tokenized_split(data.train, tokenizer, data.max_seq_len, "train", prefix)
    train_packed = pack(shuffled(train, data.shuffle_seed), data.max_seq_len, pad_id, data.packing)
    validation = None
    if data.validation:
        val, _ = tokenized_split(data.validation, tokenizer, data.max_seq_len, "validation", prefix)
        if data.max_eval_examples:
            val = val[: data.max_eval_examples]
        validation = pack(val, data.max_seq_len, pad_id, data.packing)
    batch = config.trainer.train_batch_size
    if config.epochs is not None:
        num_steps = max(1, math.ceil(config.epochs * len(train_packed) / batch))
    else:
        num_steps = config.trainer.num_train_steps
    if verbose:
        say(
            f"train: {train_packed.num_examples} examples in {len(train_packed)} sequences of {data.max_seq_len} tokens "
            f"({train_packed.real_tokens_N.sum() / train_packed.tokens_NxL.size:.0%} real tokens); "
            f"{num_steps} steps of {batch} = {num_steps * batch / len(train_packed):.2f} epochs"
        )
    return PreparedData(train_packed, validation, report, num_steps)


def stable_run_id(run_dir: str) -> str:
    """Same run dir, same id: a resumed run continues the same tracker run."""
    name = os.path.basename(run_dir.rstrip("/")) or "run"
    return f"{name}-{hashlib.sha1(run_dir.encode()).hexdigest()[:8]}"


def finalize_config(config: TrainConfig, num_steps: int) -> TrainConfig:
    config = with_run_dir_defaults(config)
    trainer = dataclasses.replace(
        config.trainer, num_train_steps=num_steps, id=config.trainer.id or stable_run_id(config.run_dir)
    )
    return dataclasses.replace(config, trainer=trainer)


def check_inputs(config: TrainConfig, chief: bool = True) -> None:
    """Everything that can be checked before RUN_DIR is touched."""
    from pipelines.config_checks import check_method, check_run_dir, check_values
    from pipelines.wandb_check import check_wandb_login

    check_values(config)
    check_run_dir(config.run_dir)
    check_method(config)
    if chief:  # the other hosts of a pod get a no-op tracker
        check_wandb_login(config)
    for name, path in (("data.train", config.data.train), ("data.validation", config.data.validation)):
        if path and not storage.exists(path):
            raise UserError(f"{name}: {path} does not exist (run `parsetune prep` first)")
    try:
        config.compute.remat_policy()
    except ValueError as err:
        raise UserError(f"compute: {err}") from err


def prompt_prefix(config: TrainConfig, converter) -> tuple[int, ...]:
    """The virtual token ids every example starts with (prompt tuning), else none."""
    from pipelines.config import PromptTuningConfig

    if not isinstance(config.method, PromptTuningConfig):
        return ()
    from parsetune.soft_prompt import virtual_ids

    return virtual_ids(converter.Vocab.size, config.method.num_virtual_tokens)


def eval_batches(packed: PackedSequences, batch_size: int, Pos: hax.Axis, Batch: hax.Axis) -> list:
    """Validation sequences in batches of the train batch size (padded with fully masked rows)."""
    from pipelines.lm_dataset import lm_example

    n = len(packed)
    rows = list(range(n)) + [-1] * ((-n) % batch_size)
    empty = dataclasses.replace(
        packed,
        tokens_NxL=np.zeros((1, packed.tokens_NxL.shape[1]), np.int32),
        loss_mask_NxL=np.zeros((1, packed.tokens_NxL.shape[1]), np.int32),
        segment_ids_NxL=np.zeros((1, packed.tokens_NxL.shape[1]), np.int32),
    )
    batches = []
    for start in range(0, len(rows), batch_size):
        examples = [lm_example(packed, r, Pos) if r >= 0 else lm_example(empty, 0, Pos) for r in rows[start : start + batch_size]]
        batches.append(jax.tree_util.tree_map(lambda *xs: hax.stack(Batch, xs), *examples, is_leaf=lambda x: isinstance(x, hax.NamedArray)))
    return batches


def step_flops(config: TrainConfig, model, trainer):
    """Model FLOPs per step and the devices' peak, for the MFU column of metrics.jsonl (None if the
    model family has no FLOP count here). On CPU, the peak is a measured matmul rate."""
    from pipelines.hooks import StepFlops
    from pipelines.mfu import levanter_train_flops_per_token, measure_matmul_flops

    from pipelines.config import PromptTuningConfig

    # LoRA: its rank; prompt tuning: rank 0 (frozen weights, gradients of the activations only); full: None
    rank = config.method.r if isinstance(config.method, LoraMethodConfig) else 0 if isinstance(config.method, PromptTuningConfig) else None
    try:
        per_token = levanter_train_flops_per_token(model.config, model.Vocab.size, config.data.max_seq_len, rank)
    except (AttributeError, TypeError, ValueError):
        return None
    devices = jax.devices()
    dtype = trainer.mp.compute_dtype
    peak = None
    if devices[0].platform == "cpu":  # fake CPU devices share the cores: split the measured rate
        peak = measure_matmul_flops(dtype=dtype) / jax.local_device_count()
    tokens = config.trainer.train_batch_size * config.data.max_seq_len
    return StepFlops(tokens, per_token, devices[0].device_kind, len(devices), str(jax.numpy.dtype(dtype)), peak)


def export_run(config: TrainConfig, model, converter, step: int) -> None:
    from parsetune.distributed import is_chief
    from pipelines.config import PromptTuningConfig
    from pipelines.export import export_merged_hf, export_peft_adapter, export_prompt_adapter
    from parsetune.hf_files import read_hf_config

    if isinstance(config.method, PromptTuningConfig):
        m = config.method
        marker = {"completed_steps": step, "base_model": config.model, "method": "prompt_tuning", "init": m.init,
                  **({"init_text": m.init_text} if m.init == "text" else {})}  # fmt: skip
        if is_chief():
            say(f"exporting the soft prompt as a PEFT adapter to {storage.join(config.run_dir, 'adapter')}")
        export_prompt_adapter(model, config.model, converter.tokenizer, storage.join(config.run_dir, "adapter"), marker)
        return
    is_lora = isinstance(config.method, LoraMethodConfig)
    marker = {"completed_steps": step, "base_model": config.model, "method": "lora" if is_lora else "full"}
    if is_chief():
        say(f"exporting merged HF checkpoint to {storage.join(config.run_dir, 'hf')}")
    export_merged_hf(model, converter, config.model, storage.join(config.run_dir, "hf"), marker, is_lora)
    if is_lora:
        model_type = read_hf_config(config.model)["model_type"]
        export_peft_adapter(
            model, lora_config_of(config.method), config.model, model_type, converter.tokenizer, storage.join(config.run_dir, "adapter"), marker
        )


def train(config: TrainConfig) -> TrainResult:
    """Train (resuming from RUN_DIR's last checkpoint) and export; the chief holds the run dir's lock."""
    import contextlib

    from parsetune import distributed
    from parsetune.run_lock import run_dir_lock
    from pipelines.export import check_export_targets

    config = dataclasses.replace(config, trainer=distributed.initialize(config.trainer))  # before any JAX backend use
    chief = distributed.is_chief()
    check_inputs(config, chief)
    if config.export:  # RUN_DIR/hf and adapter are replaced: only when they hold an earlier export
        check_export_targets(storage.join(config.run_dir, "hf"), storage.join(config.run_dir, "adapter"))
    with run_dir_lock(config.run_dir, "train") if chief else contextlib.nullcontext():
        return _train_in_run_dir(config, chief)


def _train_in_run_dir(config: TrainConfig, chief: bool) -> TrainResult:
    import levanter
    from levanter.callbacks import log_step_info
    from levanter.trainer import Trainer

    from pipelines.hooks import KILL_AFTER_STEP_ENV, CheckpointHook, EvalLoss, KillAfterStep, MetricsLog, StepLogger
    from parsetune.model_families import converter_for_checkpoint
    from pipelines.lm_dataset import PackedLmDataset
    from parsetune import distributed
    from pipelines.levanter_compat import join_tracker_broadcast, tracker_for_host, without_write_cache
    from pipelines.loss import rows_need, training_loss

    converter = converter_for_checkpoint(config.model)
    prepared = prepare_data(config, converter.tokenizer, verbose=chief, prefix=prompt_prefix(config, converter))
    config = finalize_config(config, prepared.num_steps)
    if not storage.is_gcs(config.run_dir):
        os.makedirs(config.run_dir, exist_ok=True)
        os.environ.setdefault("WANDB_DIR", os.path.abspath(config.run_dir))
    if chief:
        storage.write_text_atomic(storage.join(config.run_dir, "config.yaml"), draccus.dump(config))

    os.environ.setdefault("WANDB_SILENT", "true")
    # One tracker run per training run, on one host (levanter_compat fix 7): Levanter would start it
    # both in levanter.initialize and in Trainer(); only the Trainer's is kept.
    host_trainer = dataclasses.replace(config.trainer, tracker=tracker_for_host(config.trainer.tracker))
    levanter.initialize(dataclasses.replace(config, trainer=dataclasses.replace(host_trainer, tracker=levanter.tracker.NoopConfig())))
    quiet_library_logs()
    optimizer = config.optimizer.build(config.trainer.num_train_steps)
    loss_fn = training_loss(rows_need(prepared.train.loss_mask_NxL))
    with Trainer(host_trainer, optimizer, loss_fn=loss_fn, add_default_hooks=False) as trainer:
        join_tracker_broadcast(config.trainer.tracker)
        levanter.tracker.log_configuration(config)
        model, is_trainable = load_model(config, converter, trainer)
        state = trainer.initial_state(jax.random.PRNGKey(config.trainer.seed), model=model, is_trainable=is_trainable)
        start = int(state.step)
        if start and chief:
            say(f"resumed from {config.trainer.checkpointer.base_path} at step {start}")
        Pos = hax.Axis("position", config.data.max_seq_len)
        batch = config.trainer.train_batch_size
        order = epoch_order(len(prepared.train), prepared.num_steps, batch, config.data.shuffle_seed)
        real_per_step = prepared.train.real_tokens_N[order].reshape(prepared.num_steps, batch).sum(axis=1)

        log = MetricsLog.resume(
            storage.join(config.run_dir, "metrics.jsonl"), start, flush_every=1 if not storage.is_gcs(config.run_dir) else 10, writer=chief
        )
        trainer.add_hook(StepLogger(log, real_per_step, prepared.num_steps, start, show=chief, flops=step_flops(config, model, trainer)), every=1)
        trainer.add_hook(log_step_info(prepared.num_steps), every=1)
        checkpointer = without_write_cache(config.trainer.checkpointer.create(trainer.run_id))  # levanter_compat fix 10
        trainer.add_hook(CheckpointHook(checkpointer, log), every=1)
        if prepared.validation is not None:
            batches = eval_batches(prepared.validation, batch, Pos, trainer.TrainBatch)
            trainer.add_hook(EvalLoss(log, batches, trainer.compute_axis_mapping, config.trainer.steps_per_eval, show=chief), every=1)
            from pipelines.task_eval import task_metrics_hook

            task_metrics = task_metrics_hook(config, log, converter.tokenizer, model.Vocab.size, trainer.device_mesh, show=chief)
            if task_metrics is not None:
                trainer.add_hook(task_metrics, every=1)

        if os.environ.get(KILL_AFTER_STEP_ENV):
            trainer.add_hook(KillAfterStep(int(os.environ[KILL_AFTER_STEP_ENV]), checkpointer), every=1)
        if start < prepared.num_steps:
            loader = trainer.data_loader(PackedLmDataset(prepared.train, order, Pos), trainer.TrainBatch)
            info = trainer.train(state, loader.iter_from_step(start))
            state = info.state
        log.flush()
        final_train = next((r["train_loss"] for r in reversed(log.rows) if "train_loss" in r), None)
        final_eval = next((r["eval_loss"] for r in reversed(log.rows) if "eval_loss" in r), None)
        if config.export:
            export_run(config, state.model, converter, int(state.step))
            distributed.barrier("parsetune-export")
    trainer.tracker.finish()
    return TrainResult(config.run_dir, int(state.step), final_train, final_eval, config.export)


def quiet_library_logs() -> None:
    """Levanter logs every checkpoint write at INFO; keep the console to our progress bar and warnings.
    (The full log still goes to Levanter's log file under trainer.log_dir.)"""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


RUN_ONLY_SECTIONS = ("tpu", "prep", "eval")  # read by `parsetune tpu` / `parsetune run`, not by training


def ignored_sections(config_path: str) -> list[str]:
    """The top-level sections of the YAML file that ``parsetune train`` does not use."""
    import yaml

    try:
        document = yaml.safe_load(storage.read_text(config_path))
    except (yaml.YAMLError, OSError, UserError):
        return []
    return [key for key in RUN_ONLY_SECTIONS if isinstance(document, dict) and key in document]


def parse_config(config_path: str, overrides: list[str]) -> TrainConfig:
    """YAML + ``--dotted.key value`` overrides -> TrainConfig; unknown keys are one-line errors."""
    if not storage.exists(config_path):
        raise UserError(f"{config_path}: no such config file")
    import contextlib
    import io

    import tempfile

    messages = io.StringIO()
    try:
        with contextlib.ExitStack() as stack:
            readable = config_path
            if storage.is_gcs(config_path):  # draccus opens the path itself: give it a local copy
                local = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".yaml"))
                local.write(storage.read_text(config_path))
                local.flush()
                readable = local.name
            with contextlib.redirect_stderr(messages):  # argparse prints a 60-line usage before exiting
                config = draccus.parse(config_class=TrainConfig, config_path=readable, args=overrides)
    except SystemExit as err:
        reason = next((line.split("error:", 1)[1].strip() for line in messages.getvalue().splitlines() if "error:" in line), "")
        raise UserError(f"{config_path}: {reason or 'invalid config or override'} (see --help for the config keys)") from err
    except DecodingError as err:
        raise UserError(f"{config_path}: {lora_only_hint(decoding_error_line(err))}") from err
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{config_path}: {lora_only_hint(first)}") from err
    from pipelines.config_checks import check_values
    from pipelines.wandb_check import check_wandb_mode

    try:
        check_values(config)
        check_wandb_mode(config)
    except UserError as err:
        raise UserError(f"{config_path}: {err}") from None
    return config


def lora_only_hint(message: str) -> str:
    """draccus's "method: The fields `quantize_base` are not valid for FullConfig" as
    "method.quantize_base: LoRA only (method.type: lora); a full fine-tune trains every weight in float"."""
    import re

    from pipelines.config import LoraMethodConfig

    match = re.fullmatch(r"method: The fields? (.+) (?:are|is) not valid for (?:FullConfig|PromptTuningConfig)", message.strip())
    fields = re.findall(r"`([^`]+)`", match.group(1)) if match else []
    if not fields or not set(fields) <= {f.name for f in dataclasses.fields(LoraMethodConfig)}:
        return message
    names = ", ".join(f"method.{name}" for name in fields)
    if "PromptTuningConfig" in message:
        return f"{names}: LoRA only (method.type: lora); prompt tuning trains only its soft prompt"
    return f"{names}: LoRA only (method.type: lora); a full fine-tune trains every weight in float"


def decoding_error_line(err: DecodingError) -> str:
    """draccus's multi-line "could not decode" message as one line: the key, what was expected, why.
    ``trainer.train_batch_size: expected int or list[ScheduleStep] (Couldn't parse 'abc' into an int)``"""
    key = ".".join(str(k) for k in (getattr(err, "key_path", None) or ())) or "value"
    lines = [line.strip() for line in str(getattr(err, "message", err)).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Could not decode the value into any of the given types"):
        alternatives = [line.split(": ", 1) for line in lines[1:]]
        expected = " or ".join(a[0] for a in alternatives)
        return f"{key}: expected {expected} ({alternatives[0][-1]})"
    return f"{key}: {'; '.join(lines) or type(err).__name__}"
