"""The ``tpu:`` section of a training config (where ``parsetune tpu`` runs the job), typed once:
``pipelines`` parses it as part of the training config (and ignores it for training); ``infra``
reads it from the YAML file and merges it with its command-line flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from parsetune.errors import UserError


@dataclass(frozen=True)
class TpuSection:
    name: Optional[str] = None  # TPU VM name
    zone: Optional[str] = None  # e.g. us-central2-b
    accelerator_type: Optional[str] = None  # e.g. v3-8, v4-32, v5litepod-16
    runtime_version: Optional[str] = None
    project: Optional[str] = None
    spot: Optional[bool] = None
    preemptible: Optional[bool] = None
    queued: Optional[bool] = None
    source: Optional[str] = None  # 'local', a .whl/.tar.gz file, or a pip spec / git+URL@REF
    run_dir: Optional[str] = None  # gs://bucket/prefix
    secrets: Optional[list[str]] = None  # extra environment variable names sent to the workers

    def given(self) -> dict[str, Any]:
        """The keys that were set (``None`` means 'not given')."""
        return {k: v for k, v in asdict(self).items() if v is not None}


BOOL_KEYS = {"spot", "preemptible", "queued"}
STR_KEYS = {"name", "zone", "accelerator_type", "runtime_version", "project", "source", "run_dir"}
ALLOWED_KEYS = sorted(f.name for f in fields(TpuSection))


def tpu_section_from(section: Any, where: str) -> TpuSection:
    """A ``tpu:`` mapping from YAML (``None``: absent) as a TpuSection, with keys and types checked."""
    if section is None:
        return TpuSection()
    if not isinstance(section, dict):
        raise UserError(f"{where}: 'tpu:' must be a mapping of {', '.join(ALLOWED_KEYS)}")
    unknown = sorted(set(section) - set(ALLOWED_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key tpu.{unknown[0]} (allowed: {', '.join(ALLOWED_KEYS)})")
    for key, value in section.items():
        if value is None:
            continue
        if key in BOOL_KEYS and not isinstance(value, bool):
            raise UserError(f"{where}: tpu.{key} must be true or false, got {value!r}")
        if key in STR_KEYS and not isinstance(value, str):
            raise UserError(f"{where}: tpu.{key} must be a string, got {value!r}")
        if key == "secrets" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise UserError(f"{where}: tpu.secrets must be a list of environment variable names")
    return TpuSection(**section)
