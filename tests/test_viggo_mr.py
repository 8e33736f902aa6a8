"""Tests for parsetune.tasks.viggo_mr: the ViGGO MR parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsetune.tasks.viggo_mr import ATTRIBUTES, FUNCTIONS, MeaningRepresentation, format_mr, normalize, parse_mr

ASSETS = Path(__file__).parent / "assets"
BUNDLED = Path(__file__).parent.parent / "prep" / "data" / "viggo"  # the shipped ViGGO copy


def test_constants():
    assert len(FUNCTIONS) == 9 and len(set(FUNCTIONS)) == 9
    assert len(ATTRIBUTES) == 14 and len(set(ATTRIBUTES)) == 14
    assert ATTRIBUTES[0] == "name" and ATTRIBUTES[-1] == "specifier"


def test_parse_well_formed():
    mr = parse_mr("inform(name[BioShock], release_year[2007], esrb[M (for Mature)], platforms[PC, Xbox])")
    assert mr == MeaningRepresentation(
        "inform",
        (("name", "BioShock"), ("release_year", "2007"), ("esrb", "M (for Mature)"), ("platforms", "PC, Xbox")),
        True,
        None,
    )


def test_values_with_punctuation_and_empty_values():
    mr = parse_mr("request_attribute(esrb[])")
    assert mr.valid and mr.attributes == (("esrb", ""),)
    mr = parse_mr("inform(name[Half-Life 2: Episode One], genres[action/adventure, shooter], esrb[E 10+ (for Everyone 10 and Older)])")
    assert mr.valid
    assert dict(mr.attributes)["esrb"] == "E 10+ (for Everyone 10 and Older)"
    assert dict(mr.attributes)["name"] == "Half-Life 2: Episode One"


def test_case_and_whitespace_are_tolerated():
    mr = parse_mr("  INFORM ( Name [ X ] ,rating[good] )\n")
    assert mr.valid and mr.function == "inform"
    assert mr.attributes == (("name", "X"), ("rating", "good"))


def test_no_attributes_is_valid():
    assert parse_mr("inform()") == MeaningRepresentation("inform", (), True, None)


@pytest.mark.parametrize(
    "text, function, attributes, error",
    [
        ("", "empty", (), "empty text"),
        ("   \n", "empty", (), "empty text"),
        ("inform(name[X], rating[go", "inform", (("name", "X"),), "unclosed '[' in attribute 'rating'"),
        ("foo(name[x])", "other", (("name", "x"),), "unknown function 'foo'"),
        ("inform name[x]", "other", (("name", "x"),), "missing '('"),
        ("(name[x])", "other", (("name", "x"),), "missing function name before '('"),
        ("inform(name[x]", "inform", (("name", "x"),), "missing ')'"),
        ("inform(name[x]) extra", "inform", (("name", "x"),), "unexpected text after ')': 'extra'"),
        ("inform(name[a], name[b])", "inform", (("name", "a"), ("name", "b")), "duplicate attribute 'name'"),
        ("inform(foo[x])", "inform", (("foo", "x"),), "unknown attribute 'foo'"),
        ("inform(name x)", "inform", (), "missing '[' after attribute 'name'"),
        ("inform(name[x] rating[y])", "inform", (("name", "x"), ("rating", "y")), "expected ',' or ')' after attribute 'name'"),
        ("inform(name[a[b]])", "inform", (("a", "b"),), "nested '[' in attribute 'name'"),
        ("Sure! inform(name[x])", "other", (("name", "x"),), "unknown function 'Sure! inform'"),
    ],
)
def test_malformed(text, function, attributes, error):
    mr = parse_mr(text)
    assert (mr.function, mr.attributes, mr.valid, mr.error) == (function, attributes, False, error)


def test_non_string_input_does_not_raise():
    mr = parse_mr(None)  # type: ignore[arg-type]
    assert mr.function == "other" and not mr.valid


def test_normalize():
    assert normalize("  Foo \t BAR\n") == "foo bar"


def _read_mrs(path: Path) -> list[str]:
    return [json.loads(line)["meaning_representation"] for line in path.read_text().splitlines() if line.strip()]


def test_asset_rows_all_valid_and_canonical():
    mrs = _read_mrs(ASSETS / "viggo_validation_50.jsonl")
    assert len(mrs) == 50
    seen_functions = set()
    for text in mrs:
        mr = parse_mr(text)
        assert mr.valid, (text, mr.error)
        assert format_mr(mr.function, mr.attributes) == text
        seen_functions.add(mr.function)
    assert seen_functions == set(FUNCTIONS)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_bundled_data_all_valid_in_canonical_order(split):
    path = BUNDLED / f"{split}.jsonl"
    rank = {a: i for i, a in enumerate(ATTRIBUTES)}
    for text in _read_mrs(path):
        mr = parse_mr(text)
        assert mr.valid, (text, mr.error)
        ranks = [rank[name] for name, _ in mr.attributes]
        assert ranks == sorted(ranks), text  # ATTRIBUTES is the data's order


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(text):
    mr = parse_mr(text)
    assert isinstance(mr.valid, bool)
    assert (mr.error is None) == mr.valid
    assert mr.function in FUNCTIONS + ("empty", "other")


_mr_alphabet = st.sampled_from(list("([{,:/ ])}abcXYZ019_-+.'\n\t"))


@settings(max_examples=300, deadline=None)
@given(st.text(_mr_alphabet, max_size=40))
def test_never_raises_on_bracket_soup(text):
    parse_mr(text)
    parse_mr("inform(" + text)


_value = st.text(
    st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), max_size=20
).map(lambda v: re.sub(r"\s+", " ", v).strip())


@st.composite
def _valid_mr(draw):
    function = draw(st.sampled_from(FUNCTIONS))
    names = draw(st.lists(st.sampled_from(ATTRIBUTES), unique=True, max_size=6))
    names.sort(key=ATTRIBUTES.index)
    return function, tuple((name, draw(_value)) for name in names)


@settings(max_examples=300, deadline=None)
@given(_valid_mr())
def test_round_trip_valid_mrs(spec):
    function, attributes = spec
    mr = parse_mr(format_mr(function, attributes))
    assert mr == MeaningRepresentation(function, attributes, True, None)
