"""The prepared-data contract, written by ``prep`` and read by training and eval alike.

One JSONL object per example: ``id`` (a string), ``input`` (the full prompt given to the model)
and ``output`` (the exact target completion, without EOS text); other fields are ignored. See the
README, "Prepared data". ``read_prepared`` is the one reader: every consumer accepts and refuses
the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from parsetune.errors import UserError
from parsetune.jsonl import read_jsonl_rows

FIELDS = ("id", "input", "output")


@dataclass(frozen=True)
class PreparedRecord:
    id: str
    input: str
    output: str

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "input": self.input, "output": self.output}, ensure_ascii=False)


def records_to_jsonl(records: list[PreparedRecord]) -> bytes:
    return "".join(r.to_json() + "\n" for r in records).encode("utf-8")


def read_prepared(path: str, limit: int | None = None) -> list[PreparedRecord]:
    """The records of a prepared JSONL file (the first ``limit`` when given).

    ``UserError`` naming ``file:line`` for a malformed line, a missing field, a field that is not a
    string (an integer id included), a duplicate id; ``UserError`` for a file without records.
    """
    records: list[PreparedRecord] = []
    first_line: dict[str, int] = {}
    for number, row in read_jsonl_rows(path):
        for field in FIELDS:
            if field not in row:
                raise UserError(f"{path}:{number}: missing field '{field}' (is this `parsetune prep` output?)")
            if not isinstance(row[field], str):
                raise UserError(f"{path}:{number}: field '{field}' must be a string, got {type(row[field]).__name__}")
        if row["id"] in first_line:
            raise UserError(f"{path}:{number}: duplicate id {row['id']!r} (first on line {first_line[row['id']]})")
        first_line[row["id"]] = number
        records.append(PreparedRecord(row["id"], row["input"], row["output"]))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise UserError(f"{path}: no examples")
    return records
