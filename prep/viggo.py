"""ViGGO sources (original CSV, GEM JSONL, the bundled copy, or the HF hub) to validated examples."""

from __future__ import annotations

import os
from dataclasses import dataclass

from parsetune.tasks.viggo_mr import parse_mr
from parsetune.errors import UserError
from prep.readers import read_rows, require_text
from prep.records import SourceExample

BUNDLED_DIR = os.path.join(os.path.dirname(__file__), "data", "viggo")
BUNDLED_SPLITS = {"train": "train.jsonl", "validation": "validation.jsonl"}
CSV_COLUMNS = ("mr", "ref")  # the original ViGGO release
GEM_FIELDS = ("gem_id", "meaning_representation", "target")  # GEM/viggo on the HF hub


@dataclass(frozen=True)
class ViggoSource:
    """Where each split comes from: a file path per split, or an HF dataset name."""

    split_paths: dict[str, str]
    hf_dataset: str | None = None

    def describe(self) -> str:
        if self.hf_dataset:
            return f"hf:{self.hf_dataset}"
        return ", ".join(f"{split}={path}" for split, path in self.split_paths.items())


def bundled_source() -> ViggoSource:
    return ViggoSource({s: os.path.join(BUNDLED_DIR, f) for s, f in BUNDLED_SPLITS.items()})


def example_from_row(row: dict, split: str, index: int, location: str, fmt: str) -> SourceExample:
    """Turn one CSV (``mr,ref``) or GEM (``gem_id,meaning_representation,target``) row into an example."""
    if fmt == "csv":
        mr = require_text(row.get("mr"), "mr", location)
        text = require_text(row.get("ref"), "ref", location)
        example_id = f"viggo-{split}-{index}"
    else:
        mr = require_text(row.get("meaning_representation"), "meaning_representation", location)
        text = require_text(row.get("target"), "target", location)
        example_id = require_text(row.get("gem_id"), "gem_id", location)
    parsed = parse_mr(mr)
    if not parsed.valid:
        raise UserError(f"{location}: meaning representation does not parse ({parsed.error}): {mr!r}")
    return SourceExample(id=example_id, text=text, target=mr, location=location)


def check_split(split: str, examples: list[SourceExample], where: str) -> None:
    if not examples:
        raise UserError(f"{where}: split '{split}' has no examples")
    seen: dict[str, str] = {}
    for ex in examples:
        if ex.id in seen:
            raise UserError(f"{ex.location}: duplicate id {ex.id!r} (first seen at {seen[ex.id]})")
        seen[ex.id] = ex.location


def load_split_file(split: str, path: str) -> list[SourceExample]:
    fmt, rows = read_rows(path, CSV_COLUMNS)
    examples = [
        example_from_row(row, split, index, f"{path}:{line}", fmt) for index, (line, row) in enumerate(rows)
    ]
    check_split(split, examples, path)
    return examples


def load_hf_splits(name: str) -> dict[str, list[SourceExample]]:
    """Load GEM/viggo (or a dataset with the same fields) through ``datasets``."""
    try:
        import datasets

        dataset = datasets.load_dataset(name)
    except Exception as err:  # offline hubs raise ConnectionError, OSError, HfHubHTTPError, ...
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"cannot load '{name}' from the Hugging Face hub ({type(err).__name__}: {first}); "
            "without hub access, pass --train/--validation files or use the bundled copy (no paths)"
        ) from err
    splits = {}
    for split, rows in dataset.items():
        examples = [
            example_from_row(row, split, i, f"{name}[{split}]:row {i}", "jsonl") for i, row in enumerate(rows)
        ]
        check_split(split, examples, f"{name}[{split}]")
        splits[split] = examples
    return splits


def load_viggo(source: ViggoSource) -> dict[str, list[SourceExample]]:
    """All splits, each validated: every MR parses, ids are unique, no split is empty."""
    if source.hf_dataset:
        return load_hf_splits(source.hf_dataset)
    return {split: load_split_file(split, path) for split, path in source.split_paths.items()}
