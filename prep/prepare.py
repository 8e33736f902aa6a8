"""``prepare``: one prep request (task, sources, prompt, destination) to a written prepared set.

The one prep function: ``parsetune prep viggo|json|viggo-json`` and ``parsetune run``'s prep step
both call it, so both validate, split-check, render and write the same way. A JSON set carries its
JSON Schema beside the manifest (``schema.json``, manifest key ``schema``): the ``--schema`` file of
task json, or the schema task viggo-json derives from the training split; every target of every
split satisfies it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from parsetune import storage
from parsetune.errors import UserError
from parsetune.tasks import check_prep_task
from parsetune.tasks.json_form import SCHEMA_FILE
from prep.prompt import JSON_INSTRUCTION, JSON_QUERY, VIGGO_INSTRUCTION, VIGGO_QUERY, PromptTemplate, pick_shots
from prep.records import SourceExample
from prep.writer import SplitSummary, render_split, write_prepared

DEFAULT_PROMPTS = {
    "viggo": (VIGGO_INSTRUCTION, VIGGO_QUERY),
    "json": (JSON_INSTRUCTION, JSON_QUERY),
    "viggo-json": (JSON_INSTRUCTION, JSON_QUERY),
}
VIGGO_SOURCES = ("viggo", "viggo-json")  # tasks read from ViGGO sources (bundled copy, files, --hf)


@dataclass(frozen=True)
class PrepRequest:
    task: str  # viggo | json | viggo-json
    out: str  # local directory or gs://bucket/prefix
    train: str | None = None  # source files; viggo without files: the bundled copy
    validation: str | None = None
    test: str | None = None
    hf: str | None = None  # viggo, viggo-json: a Hugging Face dataset name
    schema: str | None = None  # json only: JSON Schema every target must satisfy
    text_field: str = "text"  # json only: source field names
    target_field: str = "json"
    id_field: str = "id"
    instruction: str | None = None  # None: the task's default; "" for none
    query_template: str | None = None
    few_shot: int = 0
    seed: int = 0
    tokenizer: str | None = None  # HF checkpoint dir: token statistics in the manifest

    def split_paths(self) -> dict[str, str]:
        return {s: p for s, p in (("train", self.train), ("validation", self.validation), ("test", self.test)) if p}

    def template(self) -> PromptTemplate:
        instruction, query = DEFAULT_PROMPTS[self.task]
        return PromptTemplate(
            instruction=instruction if self.instruction is None else self.instruction,
            query=query if self.query_template is None else self.query_template,
        )


def _same_file(a: str, b: str) -> bool:
    if storage.is_gcs(a) or storage.is_gcs(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def check_sources(request: PrepRequest) -> dict[str, str]:
    """The split files of ``request``; ``UserError`` for a combination that cannot be right."""
    paths = request.split_paths()
    if request.hf:
        if request.task not in VIGGO_SOURCES:
            raise UserError(f"--hf is only for tasks {' and '.join(VIGGO_SOURCES)}")
        if paths:
            raise UserError("--hf cannot be combined with --train/--validation/--test")
        return {}
    if request.schema is not None and request.task != "json":
        raise UserError(f"--schema is only for task json (task {request.task} {'derives its own' if request.task == 'viggo-json' else 'has none'})")
    if (paths or request.task == "json") and not (request.train and request.validation):
        raise UserError("give both --train and --validation" + (" (or neither, for the bundled copy)" if request.task in VIGGO_SOURCES else ""))
    splits = list(paths)
    for i, first in enumerate(splits):
        for second in splits[i + 1 :]:
            if _same_file(paths[first], paths[second]):
                raise UserError(
                    f"--{first} and --{second} are the same file ({paths[second]}); "
                    "the validation and test splits must be held out from training"
                )
    return paths


@dataclass(frozen=True)
class LoadedSources:
    description: str  # where the rows came from (manifest "source")
    splits: dict[str, list[SourceExample]]
    options: dict  # task options for the manifest
    schema: dict | None = None  # JSON tasks: the schema every target satisfies (written as schema.json)
    manifest: dict | None = None  # extra top-level manifest keys


def load_sources(request: PrepRequest, paths: dict[str, str]) -> LoadedSources:
    if request.task in VIGGO_SOURCES:
        from prep.viggo import ViggoSource, bundled_source, load_viggo

        source = ViggoSource({}, hf_dataset=request.hf) if request.hf else ViggoSource(paths) if paths else bundled_source()
        splits = load_viggo(source)
        if request.task == "viggo":
            return LoadedSources(source.describe(), splits, {})
        return viggo_as_json(source.describe(), splits)
    from prep.json_task import JsonFields, load_json_split, load_schema

    fields = JsonFields(text=request.text_field, target=request.target_field, id=request.id_field)
    schema = load_schema(request.schema)
    splits = {split: load_json_split(split, path, fields, schema, request.schema) for split, path in paths.items()}
    description = ", ".join(f"{s}={p}" for s, p in paths.items())
    return LoadedSources(description, splits, {"fields": vars(fields), "schema": request.schema}, schema)


def viggo_as_json(description: str, splits: dict[str, list[SourceExample]]) -> LoadedSources:
    """ViGGO splits with every MR turned into a JSON object, and the schema learned from train
    (``prep.viggo_json``); every target of every split is checked against it."""
    from prep.viggo_json import LICENSE, learn_types, to_json_examples
    from parsetune.tasks.json_form import loads_strict, make_validator, schema_violation

    if "train" not in splits:
        raise UserError(f"{description}: the source has no train split (has {', '.join(sorted(splits))})")
    types = learn_types((e.text, e.target) for e in splits["train"])
    schema = types.schema()
    converted = {split: to_json_examples(examples, types) for split, examples in splits.items()}
    validator = make_validator(schema)
    for examples in converted.values():
        for e in examples:
            problem = schema_violation(loads_strict(e.target), validator)
            if problem is not None:
                raise UserError(f"{e.location}: target does not match the schema derived from the train split {problem}")
    return LoadedSources(description, converted, {"from": "viggo"}, schema, {"license": LICENSE})


def prepare(request: PrepRequest) -> list[SplitSummary]:
    """Validate the sources, render every split, write ``OUT/<split>.jsonl`` + ``manifest.json``.

    All or nothing: any bad row, any failed write or an interruption leaves ``OUT`` as it was.
    """
    from parsetune.output_guard import refuse_inputs_inside
    from prep.writer import check_destination

    check_prep_task(request.task)
    storage.check_output_dir(request.out)
    paths = check_sources(request)
    # OUT is replaced whole: it must not hold (or lie inside) a source, and must be a prepared set or new
    refuse_inputs_inside(request.out, [*paths.values(), request.schema, request.tokenizer])
    check_destination(request.out)
    template = request.template()
    loaded = load_sources(request, paths)
    splits = loaded.splits
    if "train" not in splits:
        raise UserError(f"{loaded.description}: the source has no train split (has {', '.join(sorted(splits))})")
    shots = pick_shots(splits["train"], request.few_shot, request.seed) if request.few_shot else ()
    records = {split: render_split(examples, template, shots) for split, examples in splits.items()}
    options = {"few_shot": request.few_shot, "seed": request.seed, "few_shot_ids": [s.id for s in shots], **loaded.options}
    task_data = {**learned_task_data(request.task, splits["train"]), **(loaded.manifest or {})}
    extra_files = {}
    if loaded.schema is not None:
        task_data["schema"] = SCHEMA_FILE
        extra_files[SCHEMA_FILE] = (json.dumps(loaded.schema, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return write_prepared(
        request.out, request.task, loaded.description, records, template, options, request.tokenizer, task_data, extra_files
    )


def learned_task_data(task: str, train: list[SourceExample]) -> dict:
    """What the manifest records about the training split for the decoder: for ViGGO, the kind and
    values of every attribute (``parsetune.tasks.viggo_values``, used to ground constrained decoding)."""
    if task != "viggo":
        return {}
    from parsetune.tasks.viggo_values import MANIFEST_KEY, learn_value_sets

    return {MANIFEST_KEY: learn_value_sets((e.text, e.target) for e in train).to_json()}
