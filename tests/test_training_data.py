"""The loss mask on the batches that reach the model: completion + EOS trained, nothing else."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from conftest import ASSETS
from pipelines.data import drop_too_long, epoch_order, pack, tokenize_rows
from prep.prompt import PromptTemplate, VIGGO_QUERY
from prep.records import SourceExample

EOS, PAD, BOS = 2, 0, 1


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def rows():
    template = PromptTemplate(instruction="", query=VIGGO_QUERY)
    src = [json.loads(line) for line in (ASSETS / "viggo_validation_50.jsonl").read_text().splitlines()][:12]
    return [
        {"id": r["gem_id"], "input": template.render(r["target"]), "output": r["meaning_representation"]}
        for r in src
    ]


def test_tokenized_example_is_bos_prompt_completion_eos(tokenizer, rows):
    ex = tokenize_rows(rows[:1], tokenizer, EOS)[0]
    assert ex.prompt[0] == BOS and EOS not in ex.prompt
    assert ex.completion[-1] == EOS
    assert tokenizer.decode(ex.completion[:-1]) == rows[0]["output"]


def check_sequence(tokens, mask, segments, examples):
    """Each packed example: mask[s+P-1 .. s+P+C-2] == 1, everything else 0."""
    expected = np.zeros_like(mask)
    offset = 0
    for ex in examples:
        p, c = len(ex.prompt), len(ex.completion)
        assert list(tokens[offset : offset + p + c]) == list(ex.prompt + ex.completion)
        # the position before each completion token (and before EOS) is trained ...
        expected[offset + p - 1 : offset + p + c - 1] = 1
        # ... and the trained targets are exactly completion + EOS
        targets = [tokens[i + 1] for i in range(offset, offset + p + c - 1) if mask[i]]
        assert targets == list(ex.completion)
        assert segments[offset] == segments[offset + p + c - 1]
        offset += p + c
    assert list(mask) == list(expected)
    assert mask[offset - 1] == 0, "EOS must not learn to predict the next example"
    assert all(t == PAD for t in tokens[offset:]) and not mask[offset:].any()


def members_of(row_tokens, row_segments, examples):
    """The examples packed in one sequence, in their order there (matched by their tokens)."""
    by_tokens = {e.prompt + e.completion: e for e in examples}
    found = []
    for segment in sorted(set(row_segments) - {-1}):
        found.append(by_tokens[tuple(int(t) for t in row_tokens[row_segments == segment])])
    return found


def test_packed_mask_trains_first_completion_token_and_eos_only(tokenizer, rows):
    examples = tokenize_rows(rows, tokenizer, EOS)
    packed = pack(examples, 256, PAD)
    assert len(packed) < len(examples), "several examples share a sequence"
    seen = []
    for row in range(len(packed)):
        members = members_of(packed.tokens_NxL[row], packed.segment_ids_NxL[row], examples)
        check_sequence(packed.tokens_NxL[row], packed.loss_mask_NxL[row], packed.segment_ids_NxL[row], members)
        seen += [m.id for m in members]
    assert sorted(seen) == sorted(e.id for e in examples), "every example packed exactly once"
    fraction = packed.loss_mask_NxL.sum() / packed.tokens_NxL.size
    assert 0.05 < fraction < 0.9, "mask neither empty nor full"


def test_batches_reaching_the_model_keep_the_mask(tokenizer, rows):
    """What Levanter's loader reads: LmExample from our dataset, after LmExample.causal."""
    import haliax as hax

    from pipelines.lm_dataset import PackedLmDataset

    examples = tokenize_rows(rows, tokenizer, EOS)
    packed = pack(examples, 256, PAD)
    Pos = hax.Axis("position", 256)
    order = epoch_order(len(packed), num_steps=2, batch_size=2, seed=0)
    dataset = PackedLmDataset(packed, order, Pos)
    batch = asyncio.run(dataset.get_batch([0, 1, 2, 3]))
    for slot, lm in enumerate(batch):
        row = int(order[slot])
        np.testing.assert_array_equal(np.asarray(lm.loss_mask.array), packed.loss_mask_NxL[row])
        np.testing.assert_array_equal(np.asarray(lm.tokens.array), packed.tokens_NxL[row])
        segment_ids = lm.attn_mask.segment_ids
        for ids in segment_ids if isinstance(segment_ids, tuple) else (segment_ids,):  # (query, key) ids
            np.testing.assert_array_equal(np.asarray(ids.array), packed.segment_ids_NxL[row])


def test_first_fit_decreasing_leaves_little_padding():
    from pipelines.data import first_fit_decreasing

    bins = first_fit_decreasing([60, 50, 40, 30, 20, 10, 90], 100)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert len(bins) == 3  # 300 tokens in 3 bins of 100
    assert all(sum([60, 50, 40, 30, 20, 10, 90][i] for i in b) <= 100 for b in bins)


def test_unpacked_is_one_example_per_sequence(tokenizer, rows):
    examples = tokenize_rows(rows, tokenizer, EOS)
    packed = pack(examples, 256, PAD, packing=False)
    assert len(packed) == len(examples)
    for row, ex in enumerate(examples):
        check_sequence(packed.tokens_NxL[row], packed.loss_mask_NxL[row], packed.segment_ids_NxL[row], [ex])


def test_too_long_examples_are_dropped_and_counted(tokenizer, rows):
    examples = tokenize_rows(rows, tokenizer, EOS)
    limit = sorted(e.length for e in examples)[6]
    kept, report = drop_too_long(examples, limit)
    assert report.dropped == sum(e.length > limit for e in examples) > 0
    assert all(e.length <= limit for e in kept)
    assert f"dropped {report.dropped} of {len(examples)}" in report.message("x.jsonl")


def test_every_epoch_is_a_permutation():
    order = epoch_order(5, num_steps=6, batch_size=2, seed=3)
    assert len(order) == 12
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:10]) == list(range(5))
    np.testing.assert_array_equal(order, epoch_order(5, 6, 2, seed=3))
