"""Hand-computed cases for eval.viggo_metrics."""

from __future__ import annotations

import pytest

from eval.viggo_metrics import (
    CONFUSION_COLUMNS,
    Accuracies,
    AttributeStats,
    aggregate,
    confusion_matrix,
    score_all,
    score_example,
)
from parsetune.tasks.viggo_mr import FUNCTIONS

REF = "inform(name[BioShock], release_year[2007], rating[excellent])"


def _tuple(s):
    return (s.function_match, s.attribute_set_match, s.attribute_value_fraction, s.exact_match, s.valid)


def test_identical():
    s = score_example(REF, REF)
    assert _tuple(s) == (True, True, 1.0, True, True)
    assert s.overall == 1.0


def test_reordered_attributes_score_but_are_not_exact():
    pred = "inform(rating[excellent], name[BioShock], release_year[2007])"
    s = score_example(pred, REF)
    assert _tuple(s) == (True, True, 1.0, False, True)


def test_case_and_whitespace():
    pred = "  Inform( name[bioshock],release_year[ 2007 ],  rating[EXCELLENT] ) "
    s = score_example(pred, REF)
    assert _tuple(s) == (True, True, 1.0, False, True)  # exact match is case-sensitive
    s = score_example("inform(name[BioShock],   release_year[2007], rating[excellent])\n", REF)
    assert s.exact_match  # ... but whitespace-insensitive (collapsed)
    s = score_example("inform(name[Bio  Shock], release_year[2007], rating[excellent])", "inform(name[Bio Shock], release_year[2007], rating[excellent])")
    assert s.attribute_value_fraction == 1.0 and s.exact_match


def test_missing_attribute():
    s = score_example("inform(name[BioShock], rating[excellent])", REF)
    assert _tuple(s) == (True, False, pytest.approx(2 / 3), False, True)
    assert s.overall == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert s.ref_attributes == (("name", True, True), ("release_year", False, False), ("rating", True, True))


def test_extra_attribute_and_wrong_value():
    s = score_example("inform(name[BioShock], release_year[2008], rating[excellent], genres[shooter])", REF)
    # set differs (extra genres); values: name ok, release_year wrong, rating ok -> 2/3
    assert _tuple(s) == (True, False, pytest.approx(2 / 3), False, True)
    assert s.ref_attributes[1] == ("release_year", True, False)


def test_wrong_function():
    s = score_example("give_opinion(name[BioShock], release_year[2007], rating[excellent])", REF)
    assert _tuple(s) == (False, True, 1.0, False, True)
    assert s.overall == pytest.approx(2 / 3)


def test_empty_and_other_predictions():
    s = score_example("", REF)
    assert (s.pred_function, s.overall, s.valid, s.pred_error) == ("empty", 0.0, False, "empty text")
    s = score_example("I think BioShock is great", REF)
    assert (s.pred_function, s.overall, s.valid) == ("other", 0.0, False)
    s = score_example("describe(name[BioShock])", REF)
    assert s.pred_function == "other"
    assert s.attribute_value_fraction == pytest.approx(1 / 3)  # attributes still extracted


def test_truncated_prediction():
    s = score_example("inform(name[BioShock], release_year[20", REF)
    assert (s.function_match, s.attribute_set_match, s.valid) == (True, False, False)
    assert s.attribute_value_fraction == pytest.approx(1 / 3)


def test_reference_without_attributes_scores_value_one():
    ref = "inform()"
    assert score_example("inform()", ref).attribute_value_fraction == 1.0
    s = score_example("inform(name[X])", ref)
    assert (s.function_match, s.attribute_set_match, s.attribute_value_fraction) == (True, False, 1.0)


def test_empty_reference_value():
    ref = "request_attribute(esrb[])"
    assert score_example("request_attribute(esrb[])", ref).attribute_value_fraction == 1.0
    s = score_example("request_attribute(esrb[E])", ref)
    assert (s.attribute_set_match, s.attribute_value_fraction) == (True, 0.0)


def test_repeated_prediction_attribute_first_wins():
    s = score_example("inform(name[BioShock], name[Other], release_year[2007], rating[excellent])", REF)
    assert (s.attribute_set_match, s.attribute_value_fraction, s.valid) == (True, 1.0, False)


PREDS = [
    REF,  # all correct
    "give_opinion(name[BioShock], rating[excellent])",  # fn wrong, set wrong, values 2/3 (ref inform)
    "",  # empty (ref confirm)
    "request(specifier[cool])",  # ref request with exact attrs but other value
    "nonsense",  # other (ref request_attribute)
]
REFS = [
    REF,
    REF,
    "confirm(name[Tetris])",
    "request(specifier[nice])",
    "request_attribute(esrb[])",
]


def test_aggregate_hand_computed():
    scores, m, cm = score_all(PREDS, REFS)
    # per example (fn, set, value): (1,1,1) (0,0,2/3) (0,0,0) (1,1,0) (0,0,0)
    assert m.n == 5
    assert m.function_name_accuracy == pytest.approx(2 / 5)
    assert m.attribute_set_accuracy == pytest.approx(2 / 5)
    assert m.attribute_value_accuracy == pytest.approx((1 + 2 / 3) / 5)
    assert m.overall_accuracy == pytest.approx((2 / 5 + 2 / 5 + (5 / 3) / 5) / 3)
    assert m.overall_accuracy == pytest.approx(sum(s.overall for s in scores) / 5)
    assert m.exact_match == pytest.approx(1 / 5)
    assert m.valid_rate == pytest.approx(3 / 5)

    assert list(m.per_function) == ["inform", "request", "confirm", "request_attribute"]
    assert m.per_function["inform"] == Accuracies(
        n=2,
        function_name_accuracy=0.5,
        attribute_set_accuracy=0.5,
        attribute_value_accuracy=pytest.approx((1 + 2 / 3) / 2),
        overall_accuracy=pytest.approx((0.5 + 0.5 + (5 / 6)) / 3),
        exact_match=0.5,
        valid_rate=1.0,
    )
    assert m.per_function["request"].attribute_value_accuracy == 0.0
    assert m.per_function["request"].function_name_accuracy == 1.0

    assert list(m.per_attribute) == ["name", "release_year", "esrb", "rating", "specifier"]
    assert m.per_attribute["name"] == AttributeStats(n=3, presence_rate=pytest.approx(2 / 3), value_accuracy=pytest.approx(2 / 3), predicted=2)
    assert m.per_attribute["release_year"] == AttributeStats(n=2, presence_rate=0.5, value_accuracy=0.5, predicted=1)
    assert m.per_attribute["rating"] == AttributeStats(n=2, presence_rate=1.0, value_accuracy=1.0, predicted=2)
    assert m.per_attribute["specifier"] == AttributeStats(n=1, presence_rate=1.0, value_accuracy=0.0, predicted=1)
    assert m.per_attribute["esrb"] == AttributeStats(n=1, presence_rate=0.0, value_accuracy=0.0, predicted=0)


def test_attribute_precision_counts_predictions_the_reference_lacks():
    _, m, _ = score_all(
        ["inform(name[A], rating[good])", "inform(name[B], rating[poor])", "inform(name[C])"],
        ["inform(name[A], rating[good])", "inform(name[B])", "inform(name[C], esrb[T (for Teen)])"],
    )
    assert (m.per_attribute["rating"].predicted, m.per_attribute["rating"].precision, m.per_attribute["rating"].recall) == (2, 0.5, 1.0)
    assert (m.per_attribute["esrb"].precision, m.per_attribute["esrb"].recall) == (1.0, 0.0)
    only_predicted = score_all(["inform(name[A], specifier[odd])"], ["inform(name[A])"])[1].per_attribute["specifier"]
    assert (only_predicted.n, only_predicted.predicted, only_predicted.precision) == (0, 1, 0.0)


def test_confusion_matrix_hand_computed():
    scores, _, cm = score_all(PREDS, REFS)
    assert cm.rows == FUNCTIONS
    assert cm.columns == FUNCTIONS + ("empty", "other") == CONFUSION_COLUMNS
    expected = {
        ("inform", "inform"): 1,
        ("inform", "give_opinion"): 1,
        ("confirm", "empty"): 1,
        ("request", "request"): 1,
        ("request_attribute", "other"): 1,
    }
    for i, row in enumerate(cm.rows):
        for j, col in enumerate(cm.columns):
            assert cm.counts[i][j] == expected.get((row, col), 0), (row, col)
    assert sum(map(sum, cm.counts)) == 5


def test_confusion_skips_unparseable_references():
    cm = confusion_matrix([score_example("inform(name[x])", "garbage")])
    assert sum(map(sum, cm.counts)) == 0


def test_no_examples():
    m = aggregate([])
    assert m.n == 0 and m.overall_accuracy == 0.0 and m.per_function == {} and m.per_attribute == {}


def test_length_mismatch():
    with pytest.raises(ValueError):
        score_all(["a"], [])
