"""Hugging Face checkpoint files, without JAX or Levanter: is a name a hub id, and a checkpoint's
``config.json`` (local, gs:// or from the hub)."""

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
