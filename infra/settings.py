"""The ``tpu:`` section of a training config, merged with command-line flags (flags win).

One YAML file holds both the training config and where it runs::

    tpu:
      name: viggo-lora
      zone: us-central2-b
      accelerator_type: v4-32
      spot: true
      run_dir: gs://my-bucket/runs/viggo-lora
    # ... the training config (the trainer ignores/strips the tpu: key)

Only the ``tpu:`` key is read here (typed once: ``parsetune/tpu_section.py``); the rest of the file
belongs to the trainer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

import yaml

from infra.target import TpuTarget
from parsetune import storage
from parsetune.errors import UserError
from parsetune.tpu_section import tpu_section_from

DEFAULT_SECRETS = ("WANDB_API_KEY", "HF_TOKEN")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

TARGET_KEYS = {f.name: f.type for f in fields(TpuTarget)}


@dataclass(frozen=True)
class TpuSettings:
    """Everything ``parsetune tpu`` needs: the target plus how to install and where the run goes."""

    target: TpuTarget
    source: str = "local"  # 'local' (archive of this checkout), a .whl/.tar.gz file, or a pip spec / git+URL@REF
    run_dir: str | None = None  # gs://bucket/prefix: train/run jobs get it as their --run_dir override
    secrets: tuple[str, ...] = DEFAULT_SECRETS  # names of local environment variables sent to the workers
    required_secrets: tuple[str, ...] = ()  # names asked for explicitly (--secret, extra tpu.secrets): submit needs them set

    def __post_init__(self) -> None:
        if self.run_dir is not None and not storage.is_gcs(self.run_dir):
            raise UserError(f"run_dir {self.run_dir!r}: must be a gs://bucket/prefix URL (every worker reads it)")
        for name in (*self.secrets, *self.required_secrets):
            if not ENV_NAME_RE.fullmatch(name):
                raise UserError(f"invalid secret name {name!r}: expected an environment variable name")
        if not self.source:
            raise UserError("setup source is empty: use 'local', a wheel/sdist file, or a pip requirement")


def read_tpu_section(config_path: str) -> dict[str, Any]:
    """The ``tpu:`` mapping of a YAML config (``{}`` when absent), checked as a ``TpuSection``."""
    text = storage.read_text(config_path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{config_path}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from err
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError(f"{config_path}: expected a YAML mapping at the top level")
    return tpu_section_from(doc.get("tpu"), config_path).given()


def merge_settings(section: dict[str, Any], overrides: dict[str, Any], where: str = "CONFIG") -> TpuSettings:
    """Build settings from a ``tpu:`` section and flag values; ``None`` overrides mean 'not given'."""
    merged = dict(section)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    for key, flag in (("name", "--name"), ("zone", "--zone")):
        if not merged.get(key):
            raise UserError(f"no TPU {key}: pass {flag} or set tpu.{key} in {where}")
    target = TpuTarget(**{k: merged[k] for k in TARGET_KEYS if k in merged})
    extra = {}
    if "source" in merged:
        extra["source"] = merged["source"]
    if "run_dir" in merged:
        extra["run_dir"] = merged["run_dir"].rstrip("/")
    if "secrets" in merged:
        extra["secrets"] = tuple(dict.fromkeys([*DEFAULT_SECRETS, *merged["secrets"]]))
        # every --secret NAME must be set; of tpu.secrets, the ones beyond the optional defaults (a config
        # may list WANDB_API_KEY/HF_TOKEN for clarity where one of them is not in use)
        given = overrides.get("secrets") or [n for n in merged["secrets"] if n not in DEFAULT_SECRETS]
        extra["required_secrets"] = tuple(dict.fromkeys(given))
    return TpuSettings(target=target, **extra)


def declared_run_dir(config_path: str) -> str | None:
    """The training config's own top-level ``run_dir`` (None when absent or unreadable)."""
    try:
        document = yaml.safe_load(storage.read_text(config_path)) or {}
    except (yaml.YAMLError, OSError, UserError):
        return None
    run_dir = document.get("run_dir") if isinstance(document, dict) else None
    return run_dir if isinstance(run_dir, str) else None


def training_run_dir(config_path: str) -> str | None:
    """The training config's own ``run_dir`` when it is on gs:// (every worker reads it)."""
    run_dir = declared_run_dir(config_path)
    return run_dir if run_dir and storage.is_gcs(run_dir) else None


def load_settings(config_path: str | None, overrides: dict[str, Any]) -> TpuSettings:
    section = read_tpu_section(config_path) if config_path else {}
    if config_path and "run_dir" not in section and (run_dir := training_run_dir(config_path)):
        section = {**section, "run_dir": run_dir}  # one run_dir for the trainer and for submit
    return merge_settings(section, overrides, where=config_path or "the config (--config)")
