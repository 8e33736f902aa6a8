"""One reader of prepared records: training and eval accept and refuse the same files."""

from __future__ import annotations

import json
import re

import pytest

from eval.generate import read_prompts
from parsetune.errors import UserError
from parsetune.records import PreparedRecord, read_prepared
from pipelines.data import read_prepared as read_training_rows


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_training_and_eval_read_the_same_records(tmp_path):
    path = write_rows(tmp_path / "v.jsonl", [{"id": "a", "input": "x", "output": "y", "extra": 1}, {"id": "b", "input": "p", "output": "q"}])
    assert read_prompts(path) == read_prepared(path) == [PreparedRecord("a", "x", "y"), PreparedRecord("b", "p", "q")]
    assert read_training_rows(path) == [{"id": "a", "input": "x", "output": "y"}, {"id": "b", "input": "p", "output": "q"}]


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([{"id": 7, "input": "x", "output": "y"}], "v.jsonl:1: field 'id' must be a string, got int"),
        ([{"id": "a", "output": "y"}], "v.jsonl:1: missing field 'input'"),
        ([{"id": "a", "input": "x", "output": "y"}, {"id": "a", "input": "x", "output": "y"}], "v.jsonl:2: duplicate id 'a' (first on line 1)"),
        ([], "v.jsonl: no examples"),
    ],
)
def test_training_and_eval_refuse_the_same_records(tmp_path, rows, expected):
    path = write_rows(tmp_path / "v.jsonl", rows)
    for reader in (read_prepared, read_prompts, read_training_rows):
        with pytest.raises(UserError, match=re.escape(expected)):
            reader(path)


def test_nan_is_not_json(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text('{"id": "a", "input": "x", "output": "y", "score": NaN}\n', encoding="utf-8")
    with pytest.raises(UserError, match="v.jsonl:1: malformed JSON: NaN is not valid JSON"):
        read_prepared(str(path))
