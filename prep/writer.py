"""Render examples into prompt/completion records and write the splits plus ``manifest.json``.

Everything is rendered and checked in memory first; then the splits and the manifest are published
as one set (``parsetune.fileset``): a failure or an interruption leaves the previous set at DEST
whole, a success replaces it whole, and the manifest is always written last.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass

from parsetune import fileset
from parsetune.errors import UserError
from parsetune.manifest import MANIFEST_NAME
from prep.prompt import PromptTemplate
from parsetune.records import PreparedRecord, records_to_jsonl
from prep.records import SourceExample

MANIFEST_FORMAT = "parsetune.prepared/v1"
STANDARD_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "schema.json")  # a set's files (replaced only beside its manifest)


@dataclass(frozen=True)
class SplitSummary:
    split: str
    file: str
    rows: int
    sha256: str
    tokens: dict | None  # prompt+completion token statistics when a tokenizer was given


def render_split(examples: list[SourceExample], template: PromptTemplate, shots: tuple[SourceExample, ...]) -> list[PreparedRecord]:
    return [PreparedRecord(id=ex.id, input=template.render(ex.text, shots), output=ex.target) for ex in examples]


def token_stats(records: list[PreparedRecord], tokenizer_path: str) -> dict:
    """Lengths in tokens of prompt, completion and both (completion + 1 for EOS)."""
    from tokenizers import Tokenizer

    file = os.path.join(tokenizer_path, "tokenizer.json") if os.path.isdir(tokenizer_path) else tokenizer_path
    if not os.path.exists(file):
        raise UserError(f"{tokenizer_path}: no tokenizer.json found")
    tokenizer = Tokenizer.from_file(file)
    prompts = [len(e.ids) for e in tokenizer.encode_batch([r.input for r in records], add_special_tokens=False)]
    outputs = [len(e.ids) for e in tokenizer.encode_batch([r.output for r in records], add_special_tokens=False)]
    totals = sorted(p + o + 1 for p, o in zip(prompts, outputs))
    return {
        "max_prompt": max(prompts),
        "max_completion": max(outputs),
        "max_total": totals[-1],
        "p99_total": totals[min(len(totals) - 1, int(0.99 * len(totals)))],
        "mean_total": round(sum(totals) / len(totals), 1),
    }


def write_prepared(
    dest: str,
    task: str,
    source: str,
    splits: dict[str, list[PreparedRecord]],
    template: PromptTemplate,
    options: dict,
    tokenizer_path: str | None = None,
    task_data: dict | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> list[SplitSummary]:
    """Write ``DEST/<split>.jsonl`` for every split, ``extra_files`` (a JSON set's ``schema.json``)
    and ``DEST/manifest.json``; all or nothing."""
    payloads = {split: records_to_jsonl(records) for split, records in splits.items()}
    summaries = [
        SplitSummary(
            split=split,
            file=f"{split}.jsonl",
            rows=len(splits[split]),
            sha256=hashlib.sha256(data).hexdigest(),
            tokens=token_stats(splits[split], tokenizer_path) if tokenizer_path else None,
        )
        for split, data in payloads.items()
    ]
    manifest = {
        "format": MANIFEST_FORMAT,
        "task": task,
        "source": source,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "splits": {s.split: {"file": s.file, "rows": s.rows, "sha256": s.sha256, "tokens": s.tokens} for s in summaries},
        "prompt": template.to_dict(),
        "options": options,
        "tokenizer": tokenizer_path,
        **(task_data or {}),
    }
    files = {summary.file: payloads[summary.split] for summary in summaries}
    files.update(extra_files or {})
    files[MANIFEST_NAME] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    owned = {MANIFEST_NAME, *STANDARD_FILES, *previous_files(dest)}
    fileset.publish(dest, files, commit=MANIFEST_NAME, owned=owned.__contains__)
    return summaries


def check_destination(dest: str) -> None:
    """``UserError`` if ``dest`` holds a ``manifest.json`` that is not one of ours (another tool's
    manifest beside the user's files): only a prepared set is replaced."""
    from parsetune.manifest import manifest_path, read_manifest as read

    try:
        manifest = read(dest)
    except UserError as err:
        raise UserError(f"{err}; {dest} is not a prepared set, so it is not replaced: give a new or empty directory") from None
    if manifest is not None and manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(
            f"{manifest_path(dest)}: not a parsetune prepared-set manifest (format {manifest.get('format')!r}); "
            f"{dest} is not replaced: give a new or empty directory"
        )


def previous_files(dest: str) -> set[str]:
    """The split files named by the manifest already at ``dest`` (none when there is no readable one)."""
    try:
        manifest = read_manifest(dest)
        schema = [manifest["schema"]] if isinstance(manifest.get("schema"), str) else []
        return {info["file"] for info in manifest["splits"].values()} | set(schema)
    except (UserError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def read_manifest(dest: str) -> dict:
    """The manifest of the set at ``dest`` (``UserError`` when there is none)."""
    from parsetune.manifest import manifest_path, read_manifest as read

    manifest = read(dest)
    if manifest is None:
        raise UserError(f"{manifest_path(dest)}: no manifest")
    return manifest
