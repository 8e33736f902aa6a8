"""Where a job runs: the TPU VM (name, zone, accelerator, runtime), validated against GCP's rules.

Every value is checked before it reaches a command line, so a typo fails here with one line instead
of minutes later inside gcloud, and nothing odd (spaces, quotes, ``;``) ever gets that far.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from parsetune.errors import UserError

NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
ZONE_RE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
PROJECT_RE = re.compile(r"(?:[a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")
RUNTIME_RE = re.compile(r"[a-z0-9][-a-z0-9.]{0,62}")
ACCELERATOR_RE = re.compile(r"(v2|v3|v4|v5p|v5litepod|v6e)-([0-9]+)")

# Default software image per TPU generation (Cloud TPU docs, "TPU software versions").
DEFAULT_RUNTIME = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}
ACCELERATOR_HELP = "v2-N, v3-N, v4-N, v5p-N (N a multiple of 8), v5litepod-N or v6e-N (N = 1, 4, 8 or a multiple of 16)"


@dataclass(frozen=True)
class Accelerator:
    family: str
    size: int  # the number after the dash: TensorCores for v2-v5p, chips for v5litepod/v6e

    @property
    def hosts(self) -> int:
        """How many TPU VM workers a slice of this type has."""
        if self.family in ("v5litepod", "v6e"):
            return 1 if self.size <= 8 else self.size // 4  # multi-host slices have 4 chips per host
        return max(1, self.size // 8)  # 4 chips (8 TensorCores on v2-v4/v5p) per host

    def __str__(self) -> str:
        return f"{self.family}-{self.size}"


def parse_accelerator(text: str) -> Accelerator:
    m = ACCELERATOR_RE.fullmatch(text or "")
    if not m:
        raise UserError(f"unknown accelerator type {text!r}: expected {ACCELERATOR_HELP}, e.g. v3-8, v4-32, v5litepod-8")
    family, size = m.group(1), int(m.group(2))
    if family in ("v5litepod", "v6e"):
        ok = size in (1, 4, 8) or (size >= 16 and size % 16 == 0)
    else:
        ok = size >= 8 and size % 8 == 0
    if not ok:
        raise UserError(f"unknown accelerator type {text!r}: expected {ACCELERATOR_HELP}")
    return Accelerator(family, size)


def check_name(name: str) -> str:
    if not name or not NAME_RE.fullmatch(name):
        raise UserError(
            f"invalid TPU name {name!r}: use lowercase letters, digits and hyphens, start with a letter, "
            "at most 63 characters, no trailing hyphen"
        )
    return name


def check_zone(zone: str) -> str:
    if not zone or not ZONE_RE.fullmatch(zone):
        raise UserError(f"invalid zone {zone!r}: expected a GCP zone such as us-central2-b or europe-west4-a")
    return zone


@dataclass(frozen=True)
class TpuTarget:
    """One TPU VM (or queued resource): the fields every gcloud command needs."""

    name: str
    zone: str
    accelerator_type: str = "v3-8"
    runtime_version: str | None = None  # None: the default image for the accelerator's generation
    project: str | None = None  # None: gcloud's configured project
    spot: bool = False
    preemptible: bool = False
    queued: bool = False  # create/delete through `gcloud compute tpus queued-resources`

    def __post_init__(self) -> None:
        check_name(self.name)
        check_zone(self.zone)
        parse_accelerator(self.accelerator_type)
        if self.runtime_version is not None and not RUNTIME_RE.fullmatch(self.runtime_version):
            raise UserError(f"invalid runtime version {self.runtime_version!r}: expected e.g. tpu-ubuntu2204-base")
        if self.project is not None and not PROJECT_RE.fullmatch(self.project):
            raise UserError(f"invalid project id {self.project!r}: expected lowercase letters, digits and hyphens")
        if self.spot and self.preemptible:
            raise UserError("choose one of --spot and --preemptible, not both")
        if self.queued and self.preemptible:
            raise UserError("queued resources take --spot, not --preemptible")

    @property
    def accelerator(self) -> Accelerator:
        return parse_accelerator(self.accelerator_type)

    @property
    def runtime(self) -> str:
        return self.runtime_version or DEFAULT_RUNTIME[self.accelerator.family]

    @property
    def hosts(self) -> int:
        return self.accelerator.hosts
