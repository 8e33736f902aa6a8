"""Hugging Face checkpoint files, without JAX or Levanter: is a name a hub id, a checkpoint's
``config.json`` (local, gs:// or from the hub), and are its local safetensors weight files whole."""

from __future__ import annotations

import json
import os
import re

from parsetune import storage
from parsetune.errors import UserError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(model: str) -> bool:
    """``org/name`` that is not a local path: a Hugging Face hub model id."""
    return not storage.is_gcs(model) and not os.path.exists(model) and bool(HUB_ID.match(model))


def read_hf_config(model_dir: str) -> dict:
    """``config.json`` of a local or gs:// checkpoint, or of a hub model id (needs the hub)."""
    if is_hub_id(model_dir):
        import transformers

        try:
            return transformers.AutoConfig.from_pretrained(model_dir).to_dict()
        except Exception as err:  # offline, gated without HF_TOKEN, no such repo
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"{model_dir}: cannot read its config from the Hugging Face hub ({first})") from err
    path = storage.join(model_dir, "config.json")
    if not storage.exists(path):
        raise UserError(f"{model_dir}: no config.json; expected an HF checkpoint directory (see `parsetune prep model`)")
    return json.loads(storage.read_text(path))


SAFETENSORS_INDEX = "model.safetensors.index.json"


def safetensors_files(model_dir: str) -> list[str]:
    """The local ``.safetensors`` weight files of a checkpoint: the shards its index names, else
    ``model.safetensors`` (none for gs://, a hub id, or other weight formats)."""
    if storage.is_gcs(model_dir) or not os.path.isdir(model_dir):
        return []
    index = os.path.join(model_dir, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{index}: unreadable safetensors index ({type(err).__name__}: {err})") from None
        return [os.path.join(model_dir, name) for name in names]
    single = os.path.join(model_dir, "model.safetensors")
    return [single] if os.path.exists(single) else []


def check_safetensors(path: str) -> None:
    """One line naming ``path`` when it is not a whole safetensors file: a header that does not parse,
    or fewer bytes than its header describes (a cut download or copy). Levanter would fail with a
    traceback deep in loading, after the run dir was written."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise UserError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            header_size = int.from_bytes(prefix, "little")
            if header_size > size - 8:
                raise UserError(f"{path}: truncated safetensors file ({size} bytes; its header alone claims {header_size})")
            header = json.loads(f.read(header_size))
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{path}: not a safetensors file (its header does not parse: {type(err).__name__})") from None
    try:
        end = max((int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"), default=0)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        raise UserError(f"{path}: not a safetensors file (its header has no valid data_offsets)") from None
    if 8 + header_size + end > size:
        raise UserError(f"{path}: truncated safetensors file ({size} bytes; its header describes {8 + header_size + end})")


def check_weights(model_dir: str) -> None:
    """Every local safetensors weight file of ``model_dir`` is whole (``check_safetensors``)."""
    for path in safetensors_files(model_dir):
        if not os.path.exists(path):
            raise UserError(f"{path}: missing (named by {os.path.join(model_dir, SAFETENSORS_INDEX)})")
        check_safetensors(path)
