"""Hand-computed cases for eval.json_metrics."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.json_metrics import (
    JsonMetrics,
    aggregate_json,
    flatten,
    score_json_all,
    score_json_example,
)
from parsetune.tasks.json_form import canonical_json, make_validator

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["name"],
}


def test_flatten_paths():
    doc = {"a": {"b": 1}, "items": [{"name": "x"}, 2], "e": [], "f": {}, "g h": True, "n": None}
    assert flatten(doc) == {
        "a.b": "1",
        "items[0].name": '"x"',
        "items[1]": "2",
        "e": "[]",
        "f": "{}",
        '["g h"]': "true",
        "n": "null",
    }
    assert flatten(3) == {"": "3"}
    assert flatten([1, [2]]) == {"[0]": "1", "[1][0]": "2"}
    # a dotted key is not confused with nesting
    assert flatten({"a.b": 1}) != flatten({"a": {"b": 1}})


def test_canonical_json():
    assert canonical_json({"b": 1.0, "a": [True, None]}) == '{"a":[true,null],"b":1}'
    assert canonical_json(1) == canonical_json(1.0)
    assert canonical_json(True) != canonical_json(1)


def test_example_scores():
    ref = {"name": "Tetris", "year": 1984, "tags": ["puzzle"]}
    s = score_json_example('{"year": 1984.0, "tags": ["puzzle"], "name": "Tetris"}', ref)
    assert (s.valid_json, s.exact_match, s.true_positives, s.n_pred_fields, s.n_ref_fields) == (True, True, 3, 3, 3)
    s = score_json_example('  {"name": "tetris", "year": 1984, "extra": 1}\n', ref)
    assert (s.valid_json, s.exact_match, s.true_positives, s.n_pred_fields, s.n_ref_fields) == (True, False, 1, 3, 3)
    s = score_json_example("Sure! {\"name\": \"Tetris\"}", ref)
    assert (s.valid_json, s.exact_match, s.true_positives, s.n_pred_fields) == (False, False, 0, 0)
    assert s.error.startswith("invalid JSON")
    assert s.schema_valid is None


def test_schema_adherence():
    v = make_validator(SCHEMA)
    ref = {"name": "Tetris"}
    assert score_json_example('{"name": "Tetris"}', ref, v).schema_valid is True
    assert score_json_example('{"year": 1984}', ref, v).schema_valid is False
    assert score_json_example("not json", ref, v).schema_valid is False
    with pytest.raises(jsonschema.SchemaError):
        make_validator({"type": 12})


def test_aggregate_hand_computed():
    refs = [{"name": "A", "year": 1}, {"name": "B"}, {"name": "C", "year": 3}, {"name": "D"}]
    preds = [
        '{"name": "A", "year": 1}',  # exact: tp 2, pred 2, ref 2, schema ok
        '{"name": "B", "year": 2}',  # tp 1, pred 2, ref 1, schema ok
        "{broken",  # invalid: tp 0, pred 0, ref 2
        '{"year": "x"}',  # tp 0, pred 1, ref 1, schema fails (no name, year not int)
    ]
    scores, m = score_json_all(preds, refs, SCHEMA)
    assert m.n == 4
    assert m.valid_json_rate == 0.75
    assert m.schema_adherence_rate == 0.5
    assert m.exact_match == 0.25
    # micro: tp 3, predicted 5, reference 6
    assert m.field_precision == pytest.approx(3 / 5)
    assert m.field_recall == pytest.approx(3 / 6)
    p, r = 3 / 5, 3 / 6
    assert m.field_f1 == pytest.approx(2 * p * r / (p + r))
    _, no_schema = score_json_all(preds, refs)
    assert no_schema.schema_adherence_rate is None


def test_zero_denominators():
    _, m = score_json_all(["{}"], [{}])
    assert (m.field_precision, m.field_recall, m.field_f1, m.exact_match) == (1.0, 1.0, 1.0, 1.0)
    # {} flattens to the single leaf "" -> {} so an empty object still counts as one field
    _, m = score_json_all(["nope"], [{"a": 1}])
    assert (m.field_precision, m.field_recall, m.field_f1) == (0.0, 0.0, 0.0)
    assert aggregate_json([], with_schema=False) == JsonMetrics(0, 0.0, None, 1.0, 1.0, 1.0, 0.0)


def test_deeply_nested_prediction_does_not_raise():
    s = score_json_example("[" * 100000, {"a": 1})
    assert not s.valid_json
    s = score_json_example("[" * 5000 + "]" * 5000, {"a": 1})
    assert s.exact_match is False


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(text):
    score_json_example(text, {"a": [1, {"b": None}]}, make_validator(SCHEMA))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(_json_values)
def test_self_score_is_perfect(value):
    s = score_json_example(json.dumps(value), value)
    assert s.valid_json and s.exact_match
    assert s.true_positives == s.n_pred_fields == s.n_ref_fields


@pytest.mark.parametrize("prediction", ['{"x": NaN}', '{"x": Infinity}', "-Infinity", "NaN"])
def test_nan_and_infinity_are_not_valid_json(prediction):
    s = score_json_example(prediction, {"x": 1})
    assert (s.valid_json, s.exact_match, s.n_pred_fields) == (False, False, 0)
    assert "is not valid JSON" in s.error
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
