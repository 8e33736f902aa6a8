"""The masked-position training loss equals Levanter's full-vocabulary loss, value and gradients."""

from __future__ import annotations

import json

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from levanter.lora import LoraConfig
from levanter.models.lm_model import compute_next_token_loss

from conftest import ASSETS, levanter_model
from pipelines.config import DEFAULT_LORA_TARGETS
from pipelines.data import pack, tokenize_rows
from pipelines.levanter_compat import loraize_from_base
from pipelines.lm_dataset import lm_example
from pipelines.loss import loss_at_masked_positions, rows_need
from prep.prompt import VIGGO_QUERY, PromptTemplate


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    with levanter_model(tiny_model_dir) as (model, converter, config):
        template = PromptTemplate(instruction="", query=VIGGO_QUERY)
        src = [json.loads(line) for line in (ASSETS / "viggo_validation_50.jsonl").read_text().splitlines()][:20]
        rows = [{"id": r["gem_id"], "input": template.render(r["target"]), "output": r["meaning_representation"]} for r in src]
        packed = pack(tokenize_rows(rows, converter.tokenizer, 2), 256, 0)
        Pos, Batch = hax.Axis("position", 256), hax.Axis("batch", 4)
        examples = [lm_example(packed, r, Pos) for r in range(4)]
        batch = jax.tree_util.tree_map(lambda *xs: hax.stack(Batch, xs), *examples, is_leaf=lambda x: isinstance(x, hax.NamedArray))
    with hax.partitioning.set_mesh(config.device_mesh), hax.axis_mapping(config.compute_axis_mapping):  # as in the Trainer
        yield model, packed, batch


def test_rows_need_covers_the_busiest_row():
    mask = np.zeros((3, 32), np.int32)
    mask[0, 3:12] = 1  # 9
    mask[1, 20:32] = 1  # 11 of which the last position never counts -> 11
    assert rows_need(mask) == 16
    assert rows_need(np.zeros((2, 8), np.int32)) == 8


def test_same_value_as_levanter(setup):
    model, packed, batch = setup
    need = rows_need(packed.loss_mask_NxL)
    assert need < 256  # the point: fewer positions than the sequence
    stock = compute_next_token_loss(model, batch).scalar()
    ours = loss_at_masked_positions(model, batch, positions_per_row=need).scalar()
    assert abs(float(stock) - float(ours)) < 1e-5
    # more room than needed changes nothing
    roomy = loss_at_masked_positions(model, batch, positions_per_row=256).scalar()
    assert abs(float(roomy) - float(ours)) < 1e-6


def test_same_gradients_as_levanter_full_and_lora(setup):
    model, packed, batch = setup
    need = rows_need(packed.loss_mask_NxL)
    lora = loraize_from_base(model, LoraConfig(target_modules=DEFAULT_LORA_TARGETS, r=4, alpha=8), key=jax.random.PRNGKey(1))
    for m in (model, lora):
        stock = eqx.filter_grad(lambda m: compute_next_token_loss(m, batch).scalar())(m)
        ours = eqx.filter_grad(lambda m: loss_at_masked_positions(m, batch, positions_per_row=need).scalar())(m)
        diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), stock, ours))
        scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(stock))
        assert max(float(d) for d in diffs) < 1e-5 * max(scale, 1.0)


def test_per_token_reduction_is_levanters(setup):
    model, packed, batch = setup
    ours = loss_at_masked_positions(model, batch, positions_per_row=8, reduction=None)
    stock = compute_next_token_loss(model, batch, reduction=None)
    assert ours.axes == stock.axes and jnp.allclose(ours.array, stock.array)
