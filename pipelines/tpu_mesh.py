"""Does a training config's mesh fit a TPU slice and a model? Checked on paper, without the devices.

A TPU slice is ``hosts`` JAX processes that together see ``devices`` JAX devices. Levanter lays them
out as a (replica, data, model) mesh: ``model = trainer.model_axis_size``, ``data = devices /
(replica x model)``. Its ``compute_axis_mapping``/``parameter_axis_mapping`` (plain properties of
``TrainerConfig``, no devices needed) say which named axes go to which mesh axis; every such axis
must divide evenly, and so must the batch.

JAX devices per chip differ by generation: v2/v3 expose each of a chip's 2 TensorCores as a device,
v4/v5p join them ("megacore": 1 device per chip), v5e/v6e chips have one TensorCore. The number in
the accelerator type counts TensorCores for v2/v3/v4/v5p and chips for v5litepod/v6e.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

from pipelines.model_dims import ModelDims

ACCELERATOR_RE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([0-9]+)$")
# jax.devices()[0].device_kind per family (as reported by libtpu)
DEVICE_KIND = {"v2": "TPU v2", "v3": "TPU v3", "v4": "TPU v4", "v5p": "TPU v5", "v5litepod": "TPU v5 lite", "v6e": "TPU v6 lite"}


@dataclass(frozen=True)
class TpuTopology:
    accelerator_type: str  # e.g. v4-32
    hosts: int  # TPU VM workers = JAX processes
    devices: int  # JAX devices in the slice
    device_kind: str  # what jax.devices()[0].device_kind reports

    @property
    def devices_per_host(self) -> int:
        return self.devices // self.hosts


def tpu_topology(accelerator_type: str) -> TpuTopology:
    """Hosts and JAX devices of a single TPU slice (Cloud TPU docs, "TPU versions" / system architecture)."""
    m = ACCELERATOR_RE.match(accelerator_type)
    if not m:
        raise ValueError(f"unknown accelerator type {accelerator_type!r}")
    family, size = m.group(1), int(m.group(2))
    if family in ("v5litepod", "v6e"):  # size = chips = devices; multi-host slices have 4 chips per host
        hosts, devices = (1 if size <= 8 else size // 4), size
    else:  # size = TensorCores; 4 chips = 8 TensorCores per host
        hosts = max(1, size // 8)
        devices = size if family in ("v2", "v3") else size // 2
    return TpuTopology(accelerator_type, hosts, devices, DEVICE_KIND[family])


@dataclass(frozen=True)
class MeshPlan:
    """The mesh a trainer config gets on a topology, and every reason it would not work (empty: valid)."""

    topology: TpuTopology
    replica: int
    data: int
    model: int
    global_batch: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def per_device_batch(self) -> float:
        return self.global_batch / (self.replica * self.data)

    @property
    def per_host_batch(self) -> float:
        return self.global_batch / self.topology.hosts


def _mesh_size(resource, sizes: Mapping[str, int]) -> int:
    names = (resource,) if isinstance(resource, str) else tuple(resource)
    return math.prod(sizes[n] for n in names)


def sharded_axes(mapping: Mapping[str, object], dims: ModelDims, sizes: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """The model's named axes that ``mapping`` puts on a mesh axis of size > 1: name -> (axis size, mesh size)."""
    out = {}
    for name, size in dims.axis_sizes.items():
        if name in mapping and mapping[name] is not None:
            mesh = _mesh_size(mapping[name], sizes)
            if mesh > 1:
                out[name] = (size, mesh)
    return out


def plan_mesh(trainer, topology: TpuTopology, dims: ModelDims) -> MeshPlan:
    """Check a Levanter ``TrainerConfig`` against a single-slice topology and a model; pure, no devices."""
    problems: list[str] = []
    model, replica = trainer.model_axis_size, trainer.replica_ici_axis_size
    if trainer.replica_dcn_axis_size != 1:
        problems.append("multislice (replica_dcn_axis_size != 1) is not modelled here")
    if topology.devices % (replica * model):
        problems.append(f"{topology.devices} devices are not divisible by replica {replica} x model {model}")
    data = max(1, topology.devices // (replica * model))
    batch = trainer.train_batch_size
    if not isinstance(batch, int):
        problems.append("train_batch_size is a schedule; only a fixed batch is checked")
        batch = 0
    elif batch % (replica * data):
        problems.append(f"global batch {batch} is not divisible by the data axis {replica * data}")
    elif batch % topology.hosts:
        problems.append(f"global batch {batch} does not split into whole per-host batches over {topology.hosts} hosts")
    for heads in sorted({dims.num_heads, dims.num_kv_heads}):
        if heads % model:
            problems.append(f"model axis {model} does not divide {heads} heads")
    tp = trainer.tensor_parallel_axes or []
    if model > 1 and "kv_head" not in tp and dims.num_kv_heads > 0:
        problems.append("q/k/v stay replicated: Llama lays q_proj/k_proj/v_proj out by kv_head, which is not a tensor parallel axis")
    sizes = {"replica": replica, "data": data, "model": model}
    for kind, mapping in (("parameter", trainer.parameter_axis_mapping), ("compute", trainer.compute_axis_mapping)):
        for name, (size, mesh) in sharded_axes(mapping, dims, sizes).items():
            if size % mesh:
                problems.append(f"{kind} axis {name!r} ({size}) is not divisible by its mesh axes ({mesh})")
    return MeshPlan(topology, replica, data, model, batch, tuple(dict.fromkeys(problems)))

