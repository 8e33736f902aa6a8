"""Export a trained Levanter model: a merged HF checkpoint (RUN_DIR/hf) and, for LoRA, a PEFT
adapter (RUN_DIR/adapter); for prompt tuning, only its PEFT prompt-tuning adapter (RUN_DIR/adapter).

The checkpoint is staged in a temporary directory and published only when complete: a local
directory is renamed into place; on gs:// an existing ``parsetune_export.json`` is deleted first,
then the files are uploaded and the marker is written last (a directory without it is not a
finished export, so an interrupted re-export never looks complete). Token ids (BOS/EOS/pad), the
generation config, tokenizer files and chat template are carried over from the base checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from levanter.lora import LoraConfig, save_peft_pretrained
from levanter.utils.jax_utils import local_cpu_mesh

from parsetune import storage
from parsetune.errors import UserError
from parsetune.distributed import host_local_copy, is_chief
from parsetune.hf_files import read_hf_config
from pipelines.levanter_compat import merge_lora, peft_prefix, restack_layers
from pipelines.quantized_base import dequantize_base

EXPORT_MARKER = "parsetune_export.json"
EXPORT_PARTIAL = ".parsetune_export.partial"  # gs:// only: an export of ours is being (re)written here
EXPORT_MARKERS = (EXPORT_MARKER, EXPORT_PARTIAL)  # a directory holding either is ours to replace
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
DROP_FILES = ("tokenizer.model",)  # a GGUF-converted tokenizer.model is a copy of the whole GGUF


def drop_unwanted_files(staging: str) -> None:
    """Remove ``DROP_FILES`` from a staging directory before it is published."""
    for name in DROP_FILES:
        if os.path.exists(os.path.join(staging, name)):
            os.unlink(os.path.join(staging, name))


def is_exported(path: str) -> bool:
    return storage.exists(storage.join(path, EXPORT_MARKER))


def check_export_targets(*out_dirs: str | None, inputs: tuple[str | None, ...] = (), flag: str = "--out") -> None:
    """One line, before any work, if an export would replace something that is not an earlier export
    (a user's directory, the run dir, the working directory) or would hold / lie inside an input."""
    from parsetune.output_guard import canonical, check_replaceable, refuse_inputs_inside

    given = [d for d in out_dirs if d]
    if len({canonical(d) for d in given}) < len(given):
        raise UserError(f"{flag}: the checkpoint and the adapter need two different directories")
    for out_dir in given:
        check_replaceable(out_dir, EXPORT_MARKERS, "an earlier export", flag=flag)
        refuse_inputs_inside(out_dir, inputs, flag=flag)


def carry_over_base_files(staging: str, base_model_dir: str) -> None:
    """config.json keeps the base model's special token ids; generation_config.json is copied."""
    base = read_hf_config(base_model_dir)
    config_path = os.path.join(staging, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    for key in TOKEN_ID_KEYS:
        if key in base:
            config[key] = base[key]
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    generation = storage.join(base_model_dir, "generation_config.json")
    if storage.exists(generation):
        with open(os.path.join(staging, "generation_config.json"), "wb") as f:
            f.write(storage.read_bytes(generation))
    drop_unwanted_files(staging)


def publish(staging: str, out_dir: str, marker: dict) -> None:
    """Move a finished staging directory to ``out_dir`` (local rename or gs:// upload, marker last)."""
    with open(os.path.join(staging, EXPORT_MARKER), "w") as f:
        json.dump(marker, f, indent=2)
    if storage.is_gcs(out_dir):
        marker_path = storage.join(out_dir, EXPORT_MARKER)
        partial = storage.join(out_dir, EXPORT_PARTIAL)
        storage.write_bytes_atomic(partial, b"")  # says "ours" while the marker is missing (a rerun may replace it)
        storage.delete(marker_path)  # from here until the new marker, out_dir is no finished export
        # plain overwrites: with the marker gone nobody reads these as an export, and one exporter
        # (process 0) writes them; the create-only marker catches a second exporter at the end
        for name in sorted(os.listdir(staging)):
            if name != EXPORT_MARKER:
                with open(os.path.join(staging, name), "rb") as f:
                    storage.write_bytes_atomic(storage.join(out_dir, name), f.read())
        with open(os.path.join(staging, EXPORT_MARKER), "rb") as f:
            storage.create_bytes(marker_path, f.read())  # last; fails if another export finished meanwhile
        storage.delete(partial)
        return
    check_export_targets(out_dir)  # again right before replacing: nothing foreign arrived meanwhile
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    old = None
    if os.path.lexists(out_dir):  # an earlier export: moved aside, removed once the new one is in place
        old = tempfile.mkdtemp(prefix=".export-old-", dir=os.path.dirname(os.path.abspath(out_dir)))
        os.rename(out_dir, os.path.join(old, "previous"))
    try:
        os.rename(staging, out_dir)
    except OSError:
        if old is not None:
            os.rename(os.path.join(old, "previous"), out_dir)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _staging_dir(out_dir: str | None) -> str:
    """A private directory beside a local ``out_dir`` (one rename publishes it), else in /tmp."""
    parent = os.path.dirname(os.path.abspath(out_dir)) if out_dir and not storage.is_gcs(out_dir) else None
    if parent:
        os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    os.chmod(staging, 0o755)
    return staging


def export_merged_hf(model, converter, base_model_dir: str, out_dir: str, marker: dict, is_lora: bool) -> None:
    """Write the (LoRA-merged) model as an HF checkpoint at ``out_dir``. Every host of a pod calls
    this (the weights are gathered from all of them); only the chief writes. A quantized base
    (``method.quantize_base``) is written dequantized, in full precision."""
    model = dequantize_base(restack_layers(model))
    merged = host_local_copy(merge_lora(model) if is_lora else model)
    staging = _staging_dir(out_dir if is_chief() else None)
    try:
        # every host takes part (Levanter's writer ends in a barrier); only the chief's staging is kept
        with local_cpu_mesh():  # the arrays are host-local now, whatever mesh the trainer spans
            converter.save_pretrained(merged, staging, save_tokenizer=True, save_reference_code=False)
        if not is_chief():
            return
        carry_over_base_files(staging, base_model_dir)
        publish(staging, out_dir, {"kind": "merged-hf", **marker})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_peft_adapter(model, lora: LoraConfig, base_model_dir: str, model_type: str, tokenizer, out_dir: str, marker: dict) -> None:
    """Write the LoRA weights as a PEFT adapter (loadable with ``PeftModel.from_pretrained``).
    Every host of a pod calls this; only the chief writes."""
    model = host_local_copy(restack_layers(model))
    staging = _staging_dir(out_dir if is_chief() else None)
    try:
        with local_cpu_mesh():
            save_peft_pretrained(model, lora, base_model_dir, staging, tokenizer, prefix=peft_prefix(model_type))
        if not is_chief():
            return
        drop_unwanted_files(staging)
        publish(staging, out_dir, {"kind": "peft-adapter", **marker})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_prompt_adapter(model, base_model_dir: str, tokenizer, out_dir: str, marker: dict) -> None:
    """Write the soft prompt as a PEFT prompt-tuning adapter (``parsetune.soft_prompt``), with the
    base model's tokenizer. Every host of a pod calls this; only the chief writes."""
    import numpy as np

    from parsetune.soft_prompt import VIRTUAL, soft_prompt_of, write_adapter

    soft = soft_prompt_of(model)
    named = host_local_copy(soft.prompt)  # a collective, of the prompt alone (not the vocabulary it wraps)
    prompt = np.asarray(named.rearrange((VIRTUAL, soft.Embed.name)).array, dtype=np.float32)
    if not is_chief():
        return
    staging = _staging_dir(out_dir)
    try:
        write_adapter(staging, prompt, base_model_dir, read_hf_config(base_model_dir))
        tokenizer.save_pretrained(staging)
        drop_unwanted_files(staging)
        publish(staging, out_dir, {"kind": "peft-prompt-tuning", **marker})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
