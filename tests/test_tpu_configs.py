"""Every TPU config's mesh, checked on paper against the slices it may run on and the model it trains.

For each ``configs/**/*_tpu.yaml`` (globbed, so new ones are covered), parsed with the project's own
parser, on its own ``tpu.accelerator_type`` and on v3-8, v4-32 and v5litepod-16 (v5e-16): the model
axis divides the devices and the head counts, the batch splits over the data axis and the hosts,
every named axis Levanter's ``parameter_axis_mapping``/``compute_axis_mapping`` shards divides its
mesh axis, and q/k/v really shard (``kv_head``). A combination that cannot work must be listed in
``EXPECTED_INVALID`` with the reason; nothing is skipped.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import equinox as eqx
import haliax as hax
import jax
import pytest

from conftest import REPO
from infra.target import parse_accelerator
from pipelines.config import FullConfig
from pipelines.model_dims import LLAMA2_7B, ModelDims, dims_for_checkpoint
from pipelines.tpu_mesh import MeshPlan, TpuTopology, plan_mesh, tpu_topology
from pipelines.train import parse_config

TPU_CONFIGS = sorted((REPO / "configs").rglob("*_tpu.yaml"))
TOPOLOGIES = ("v3-8", "v4-32", "v5litepod-16")
# (config file name, accelerator type) -> why it cannot run there. Empty today: every shipped config
# (model axis 2) fits all four combinations; add an entry (with the reason) rather than skipping.
EXPECTED_INVALID: dict[tuple[str, str], str] = {}


def combos():
    for path in TPU_CONFIGS:
        own = parse_config(str(path), []).tpu.accelerator_type
        for acc in dict.fromkeys((own, *TOPOLOGIES)):
            yield pytest.param(path, acc, id=f"{path.stem}@{acc}")


def test_there_are_tpu_configs():
    assert {p.name for p in TPU_CONFIGS} >= {"llama2_7b_full_tpu.yaml", "llama2_7b_lora_tpu.yaml"}


@pytest.mark.parametrize(
    "acc, hosts, devices, kind",
    [("v3-8", 1, 8, "TPU v3"), ("v4-32", 4, 16, "TPU v4"), ("v5litepod-16", 4, 16, "TPU v5 lite"),
     ("v5litepod-8", 1, 8, "TPU v5 lite"), ("v5p-8", 1, 4, "TPU v5"), ("v2-32", 4, 32, "TPU v2")],
)
def test_topologies(acc, hosts, devices, kind):
    t = tpu_topology(acc)
    assert (t.hosts, t.devices, t.device_kind) == (hosts, devices, kind)
    assert t.hosts == parse_accelerator(acc).hosts, "the same worker count as parsetune tpu uses"


def dims_of(config) -> ModelDims:
    dims = dims_for_checkpoint(config.model)
    assert dims is not None, f"{config.model}: add the model's dimensions to pipelines/model_dims.py"
    return dims


@pytest.mark.parametrize("path, acc", list(combos()))
def test_mesh_fits_topology_and_model(path: Path, acc: str):
    config = parse_config(str(path), [])
    dims = dims_of(config)
    plan = plan_mesh(config.trainer, tpu_topology(acc), dims)
    expected = EXPECTED_INVALID.get((path.name, acc))
    if expected is not None:
        assert not plan.ok, f"listed as invalid ({expected}) but the plan is fine: remove the entry"
        return
    assert plan.ok, f"{path.name} on {acc}: {'; '.join(plan.problems)}"
    t = plan.topology
    assert plan.model * plan.data * plan.replica == t.devices
    assert t.devices % plan.model == 0 and dims.num_heads % plan.model == 0 and dims.num_kv_heads % plan.model == 0
    assert plan.per_device_batch.is_integer() and plan.per_host_batch.is_integer()


@pytest.mark.parametrize("path", TPU_CONFIGS, ids=lambda p: p.stem)
def test_config_shards_what_it_should(path: Path):
    trainer = parse_config(str(path), []).trainer
    dims = dims_of(parse_config(str(path), []))
    tp = trainer.tensor_parallel_axes
    assert {"mlp", "heads", "kv_head"} <= set(tp), "q/k/v shard on kv_head, o_proj on heads, the MLP on mlp"
    assert ("vocab" in tp) == (dims.vocab_size % trainer.model_axis_size == 0), "vocab sharded exactly when it divides"
    assert trainer.batch_axis == "batch" and trainer.compute_axis_mapping["batch"] == ("replica", "data")
    assert trainer.parameter_axis_mapping["embed"] == "data", "FSDP: parameters and optimizer states shard embed over data"
    assert trainer.fsdp_axis == "embed" and "fsdp_axis: embed" in path.read_text(), "FSDP is explicit in the file"
    for axis in tp:
        assert trainer.parameter_axis_mapping[axis] == "model"


def test_full_finetune_is_fsdp():
    config = parse_config(str(REPO / "configs/viggo/llama2_7b_full_tpu.yaml"), [])
    assert isinstance(config.method, FullConfig) and config.trainer.fsdp_axis == "embed"


# --- the real Levanter Llama-2-7B parameters (abstract shapes only), through haliax's own mapping ---


@pytest.fixture(scope="module")
def llama7b_param_axes() -> dict[str, tuple[hax.Axis, ...]]:
    from levanter.models.llama import LlamaConfig, LlamaLMHeadModel

    d = LLAMA2_7B
    config = LlamaConfig(seq_len=256, hidden_dim=d.hidden_dim, intermediate_dim=d.intermediate_dim,
                         num_layers=d.num_layers, num_heads=d.num_heads, num_kv_heads=d.num_kv_heads)
    model = eqx.filter_eval_shape(LlamaLMHeadModel.init, hax.Axis("vocab", d.vocab_size), config, key=jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves_with_path(model, is_leaf=lambda x: isinstance(x, hax.NamedArray))
    return {jax.tree_util.keystr(p): leaf.axes for p, leaf in leaves if isinstance(leaf, hax.NamedArray)}


def test_levanter_llama_axes_match_the_dims_table(llama7b_param_axes):
    sizes = LLAMA2_7B.axis_sizes
    seen = {a.name: a.size for axes in llama7b_param_axes.values() for a in axes}
    assert seen == {k: v for k, v in sizes.items() if k in seen} and {"kv_head", "heads", "mlp", "vocab", "embed"} <= set(seen)
    total = sum(math.prod(a.size for a in axes) for axes in llama7b_param_axes.values())
    assert total == LLAMA2_7B.num_params() == 6_738_415_616


def param_specs(axes_by_param, mapping) -> dict[str, tuple]:
    return {name: tuple(hax.partitioning.pspec_for_axis(axes, mapping)) for name, axes in axes_by_param.items()}


@pytest.mark.parametrize("path, acc", list(combos()))
def test_every_llama_parameter_divides_its_mesh_axes(path: Path, acc: str, llama7b_param_axes):
    trainer = parse_config(str(path), []).trainer
    plan: MeshPlan = plan_mesh(trainer, tpu_topology(acc), LLAMA2_7B)
    if (path.name, acc) in EXPECTED_INVALID:
        return  # the reason is asserted in test_mesh_fits_topology_and_model
    sizes = {"replica": plan.replica, "data": plan.data, "model": plan.model}
    specs = param_specs(llama7b_param_axes, trainer.parameter_axis_mapping)
    for name, spec in specs.items():
        for axis, mesh in zip(llama7b_param_axes[name], spec):
            if mesh is not None:
                n = sizes[mesh] if isinstance(mesh, str) else math.prod(sizes[m] for m in mesh)
                assert axis.size % n == 0, f"{name}: {axis.name}={axis.size} over {mesh}={n}"
    on_model = {name for name, spec in specs.items() if "model" in spec}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(proj in n for n in on_model), f"{proj} is replicated on the model axis"
    assert any("token_embeddings" in n for n in on_model) and any("lm_head" in n for n in on_model)
    assert all("data" in spec for name, spec in specs.items() if "norm" not in name), "FSDP: every matrix shards on data"


# --- the checker itself rejects what it should (so the tests above are not vacuous) ---


def _trainer(**changes):
    base = parse_config(str(REPO / "configs/viggo/llama2_7b_full_tpu.yaml"), []).trainer
    return dataclasses.replace(base, **changes)


ODD_HEADS = ModelDims("24-heads", 4096, 11008, 2, 24, 24, 32000)


@pytest.mark.parametrize(
    "changes, acc, dims, reason",
    [
        ({"model_axis_size": 16}, "v3-8", LLAMA2_7B, "8 devices are not divisible by replica 1 x model 16"),
        ({"model_axis_size": 3}, "v4-32", LLAMA2_7B, "not divisible by replica 1 x model 3"),
        ({"train_batch_size": 100}, "v4-32", LLAMA2_7B, "global batch 100 is not divisible by the data axis 8"),
        ({"train_batch_size": 6, "model_axis_size": 8}, "v5litepod-16", LLAMA2_7B, "whole per-host batches over 4 hosts"),
        ({"tensor_parallel_axes": ["mlp", "heads"]}, "v3-8", LLAMA2_7B, "q/k/v stay replicated"),
        ({"model_axis_size": 16}, "v6e-64", ODD_HEADS, "model axis 16 does not divide 24 heads"),
    ],
)
def test_checker_rejects_bad_meshes(changes, acc, dims, reason):
    plan = plan_mesh(_trainer(**changes), tpu_topology(acc), dims)
    assert not plan.ok and any(reason in p for p in plan.problems), plan.problems


def test_checker_rejects_an_indivisible_vocab():
    dims = ModelDims("odd-vocab", 4096, 11008, 2, 32, 32, 32001)
    plan = plan_mesh(_trainer(), TpuTopology("v3-8", 1, 8, "TPU v3"), dims)
    assert any("'vocab' (32001)" in p for p in plan.problems), plan.problems
