"""Value sets learned from training data, and grounded constrained decoding (copied values are
spans of the row's own sentence)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from parsetune.tasks.viggo_mr import parse_mr
from parsetune.tasks.viggo_values import (
    ValueSets,
    is_span,
    learn_value_sets,
    read_grounding,
    sentence_of,
    sentence_spans,
)


def _bundled(split: str) -> list[dict]:
    return [json.loads(line) for line in open(REPO / "prep" / "data" / "viggo" / f"{split}.jsonl")]


@pytest.fixture(scope="module")
def learned() -> ValueSets:
    return learn_value_sets((r["target"], r["meaning_representation"]) for r in _bundled("train"))


def test_kinds_are_decided_from_the_training_data(learned):
    kinds = {name: spec.kind for name, spec in learned.attributes.items()}
    assert {a for a, k in kinds.items() if k == "copy"} == {"name", "developer", "specifier", "exp_release_date", "release_year"}
    assert {a for a, k in kinds.items() if k == "list"} == {"genres", "platforms", "player_perspective"}
    assert learned.of("rating").values == ("average", "excellent", "good", "poor")
    assert learned.of("has_mac_release").values == ("no", "yes")
    assert learned.of("release_year").max_units == 1
    assert learned.of("specifier").copy_rate == 1.0
    assert learned.of("no_such_attribute").kind == "free"
    assert learned.of("genres").ordered and learned.of("platforms").ordered
    assert ValueSets.from_json(json.loads(json.dumps(learned.to_json()))) == learned


def test_toy_data_decides_differently():
    """Nothing is ViGGO-specific in code: a value never in its sentence is not a copy attribute."""
    pairs = [(f"Game {i} is good", f"inform(name[Game {i}], rating[{'good' if i % 2 else 'poor'}])") for i in range(20)]
    learned = learn_value_sets(pairs)
    assert learned.of("name").kind == "copy" and learned.of("name").max_units == 2
    assert learned.of("rating").kind == "closed" and learned.of("rating").values == ("good", "poor")


def test_item_order_is_consistent_with_every_training_list():
    from parsetune.tasks.viggo_values import item_order

    assert item_order([["b", "c"], ["a", "c"], ["a", "b"]]) == ("a", "b", "c")
    assert item_order([["x"], ["b", "c"], ["a"]]) == ("x", "b", "c", "a")  # unrelated items: first seen first
    assert item_order([["a", "b"], ["b", "a"]]) is None  # contradicting lists
    assert item_order([["a", "b", "a"]]) is None  # a repeated item
    assert item_order([["a", "b"], ["b", "c"], ["c", "a"]]) is None  # a cycle over three lists


def test_spans_are_runs_of_words_and_punctuation_as_written():
    spans = sentence_spans("I loved BioShock's story, really.", max_units=3)
    assert "BioShock" in spans and "loved BioShock" in spans and "BioShock's" in spans
    assert "story, really" in spans
    assert "I loved BioShock" in spans and "I loved BioShock'" not in spans  # 4 units
    assert "Bioshock" not in spans and "oShock" not in spans
    assert is_span("Grimlore Games", "made by Grimlore Games.") and not is_span("Grimlore", "made by GrimloreGames")


def test_sentence_of_finds_the_last_query_of_a_few_shot_prompt():
    query = "Sentence: {text}\nMeaning representation:\n"
    prompt = "Sentence: A is bad\nMeaning representation:\ngive_opinion(name[A])\n\nSentence: B is fun\nMeaning representation:\n"
    assert sentence_of(prompt, query) == "B is fun"
    assert sentence_of("no template here", query) == "no template here"


def _accepts(tokenizer, grammar_text: str, mr: str) -> bool:
    import llguidance
    import llguidance.hf

    grammar = llguidance.LLMatcher.grammar_from_lark(grammar_text)
    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer, eos_token=2), grammar, log_level=0)
    ids = tokenizer(mr, add_special_tokens=False)["input_ids"]
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_grounded_grammar_allows_only_spans_of_the_sentence(tokenizer, learned):
    from eval.constrained import viggo_lark

    sentence = "BioShock is a controversial shooter from 2007 by 2K Boston."
    grounded = viggo_lark(learned, sentence)
    assert _accepts(tokenizer, grounded, "inform(name[BioShock], release_year[2007], developer[2K Boston], genres[shooter], specifier[controversial])")
    assert not _accepts(tokenizer, grounded, "inform(name[Bioshock])")  # not as written
    assert not _accepts(tokenizer, grounded, "inform(specifier[controversical])")  # misspelt copy
    assert not _accepts(tokenizer, grounded, "inform(name[Portal 2])")  # another sentence's name
    assert not _accepts(tokenizer, grounded, "inform(release_year[2007 by])")  # longer than training's longest year
    assert not _accepts(tokenizer, grounded, "inform(rating[controversial])")  # closed attributes unchanged
    assert _accepts(tokenizer, grounded, "inform(genres[shooter, tactical])")
    assert not _accepts(tokenizer, grounded, "inform(genres[shooter, tactical, shooter])")  # repeated item
    assert not _accepts(tokenizer, grounded, "inform(genres[tactical, shooter])")  # against training's order
    free = viggo_lark(learned)  # the same sets without a sentence: copied values are free text
    assert _accepts(tokenizer, free, "inform(name[Portal 2], specifier[controversical])")
    assert not _accepts(tokenizer, free, "inform(rating[awesome])")


def test_grounded_grammar_accepts_almost_every_validation_reference(tokenizer, learned):
    """The bound grounding puts on exact match: references whose copied values are not spans of
    their sentence (as written) become unreachable; on the bundled validation split that is rare."""
    from eval.constrained import viggo_lark

    rows = _bundled("validation")
    rejected = [r for r in rows if not _accepts(tokenizer, viggo_lark(learned, r["target"]), r["meaning_representation"])]
    assert len(rejected) / len(rows) < 0.01, [r["meaning_representation"] for r in rejected[:5]]


def test_prep_writes_the_sets_and_the_decoder_reads_them(tmp_path):
    from prep.prepare import PrepRequest, prepare

    assert read_grounding(str(tmp_path / "nothing" / "validation.jsonl")) is None
    prepare(PrepRequest(task="viggo", out=str(tmp_path / "data"), instruction=""))
    grounding = read_grounding(str(tmp_path / "data" / "validation.jsonl"))
    assert grounding is not None and grounding.values.of("name").kind == "copy"
    first = json.loads((tmp_path / "data" / "validation.jsonl").read_text().splitlines()[0])
    assert grounding.sentence(first["input"]) == _bundled("validation")[0]["target"]


def test_generate_with_grounding_copies_only_spans(tiny_model_dir, tmp_path):
    """Random weights under the grounded grammar: every copied value produced is a span of its own
    row's sentence; without grounding the same model is free to write other text."""
    from eval.generate import generate_predictions
    from prep.prepare import PrepRequest, prepare

    prepare(PrepRequest(task="viggo", out=str(tmp_path / "data"), instruction=""))
    grounding = read_grounding(str(tmp_path / "data" / "validation.jsonl"))
    copied = set(grounding.values.copied())
    out = tmp_path / "grounded.jsonl"
    stats = generate_predictions(
        str(tiny_model_dir), str(tmp_path / "data" / "validation.jsonl"), str(out),
        batch_size=4, max_new_tokens=48, limit=12, constrain="viggo", progress=False,
    )  # fmt: skip
    assert "spans of the sentence" in stats.constraint
    for line in out.read_text().splitlines():  # (a random model seldom picks a copied attribute)
        row = json.loads(line)
        mr = parse_mr(row["prediction"])
        assert mr.valid, row["prediction"]
        for name, value in mr.attributes:
            if name in copied and value:
                assert is_span(value, grounding.sentence(row["input"])), (name, value, row["input"])
    free = generate_predictions(
        str(tiny_model_dir), str(tmp_path / "data" / "validation.jsonl"), str(tmp_path / "free.jsonl"),
        batch_size=4, max_new_tokens=48, limit=12, constrain="viggo", progress=False, ground_values=False,
    )  # fmt: skip
    assert "copied values free" in free.constraint


def test_each_row_of_a_batch_gets_its_own_sentence(tokenizer, learned):
    """Per-row grammars: after ``inform(name[`` row 0 may start only its own sentence's words."""
    import numpy as np

    from eval.constrained import build_constraint
    from parsetune.tasks.viggo_values import Grounding

    grounding = Grounding(learned, "Sentence: {text}\nMeaning representation:\n")
    constraint = build_constraint("viggo", tokenizer, 512, [2], grounding=grounding)
    prompts = [f"Sentence: {s}\nMeaning representation:\n" for s in ("Zork is old.", "Halo is new.")]
    constraint.for_prompts(prompts)
    constraint.start(2)
    masks = np.zeros((2, 1, 16), np.int32)
    for row in range(2):
        for token in tokenizer("inform(name[", add_special_tokens=False)["input_ids"]:
            constraint.consume(row, token)
        constraint.fill_masks(row, [], masks[row], 40)

    def allowed(row: int, text: str) -> bool:
        first = tokenizer(text, add_special_tokens=False)["input_ids"][0]
        return bool((masks[row, 0, first // 32] >> (first % 32)) & 1)

    assert allowed(0, "Zork") and not allowed(0, "Halo")
    assert allowed(1, "Halo") and not allowed(1, "Zork")
    constraint.start(2)  # a batch without for_prompts falls back to the shared (ungrounded) grammar
