"""What ``parsetune serve MODEL_OR_RUN_DIR`` serves: checkpoint, tokenizer, prompt format, constraints.

A **run dir** (``parsetune run``'s output: ``hf/``, ``config.yaml``, ``prep/manifest.json``) knows
its task: the prompt its model was trained on (instruction, few-shot examples, query template from
the manifest) and the constraint its evaluation used (``eval.constrain``: the ViGGO grammar with
the learned, grounded values, or the JSON Schema). Those become the server's defaults. A bare HF
**model dir** serves raw completions and chat; its page asks for a prompt format it does not have.

``ServedModel.constraint(spec, prompt)`` turns a request's choice (``task``, ``viggo``,
``json_object``, ``json_schema`` with a schema, ``none``) into a ``GrammarConstraint`` (or None) and
the one-line description the response reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from parsetune import storage
from parsetune.errors import UserError



@dataclass(frozen=True)
class PromptFormat:
    """How the served model's training prompts look: ``prefix`` (instruction and few-shot examples)
    then ``query`` with ``{text}`` replaced by the input."""

    prefix: str
    query: str

    def render(self, text: str) -> str:
        return self.prefix + self.query.format(text=text)


@dataclass(frozen=True)
class ConstraintSpec:
    """A request's choice of output constraint: ``kind`` is ``task`` (the run's own), ``none``,
    ``viggo``, ``json_object`` or ``json_schema`` (with ``schema``)."""

    kind: str
    schema: dict | None = None
    name: str = ""


@dataclass(frozen=True)
class RunTask:
    """The task a run dir was trained for, from its config and prepared data."""

    task: str  # viggo | json | ...
    constrain: str | None  # viggo | json-schema | None
    schema_path: str | None
    prompt: PromptFormat | None
    data_path: str | None  # a prepared split (its manifest has the grounding)
    max_new_tokens: int = 96  # the run's evaluation budget: /v1/parse's default max_tokens


def resolve_target(target: str) -> tuple[str, str | None]:
    """``(model dir, run dir or None)`` of MODEL_OR_RUN_DIR (the model dir may be a PEFT prompt-tuning adapter)."""
    if not storage.is_gcs(target) and not os.path.isdir(target):
        raise UserError(f"{target}: no such model or run directory")
    from parsetune.soft_prompt import is_prompt_adapter

    hf, adapter = storage.join(target, "hf"), storage.join(target, "adapter")
    if storage.exists(storage.join(target, "config.yaml")):
        if storage.exists(storage.join(hf, "config.json")):
            return hf, target
        if is_prompt_adapter(adapter):  # a prompt-tuning run: its adapter names the base model
            return adapter, target
    if storage.exists(storage.join(target, "config.json")) or is_prompt_adapter(target):
        return target, None
    raise UserError(f"{target}: neither a run dir (config.yaml + hf/ or a prompt-tuning adapter/), an HF model dir (config.json) nor a prompt-tuning adapter")


def read_run_task(run_dir: str) -> RunTask:
    import yaml

    config_path = storage.join(run_dir, "config.yaml")
    try:
        config = yaml.safe_load(storage.read_text(config_path)) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{config_path}: not valid YAML ({err})") from None
    section = lambda name: config.get(name) or {}  # noqa: E731
    data_path = storage.join(run_dir, "prep", "validation.jsonl")
    if not storage.exists(data_path):
        data_path = section("data").get("validation")
        if data_path and not storage.is_gcs(data_path) and not os.path.isabs(data_path):
            data_path = None  # relative to where the run was launched: not ours to guess
    prompt = _prompt_format(data_path) if data_path and storage.exists(data_path) else None
    return RunTask(
        task=str(section("prep").get("task") or "viggo"),
        constrain=section("eval").get("constrain"),
        schema_path=section("eval").get("schema") or section("prep").get("schema"),
        prompt=prompt,
        data_path=data_path if prompt is not None else None,
        max_new_tokens=int(section("eval").get("max_new_tokens") or 96),
    )


def _prompt_format(data_path: str) -> PromptFormat | None:
    """The prompt format of a prepared split, from its manifest (instruction, query template) and,
    for few-shot prompts, the examples' text as its first row holds them."""
    from parsetune.manifest import manifest_beside

    try:
        manifest, _ = manifest_beside(data_path)
        prompt = manifest["prompt"] if manifest is not None else None
        instruction, query = str(prompt["instruction"]), str(prompt["query"])
    except (UserError, KeyError, TypeError):
        return None
    from parsetune.records import read_prepared
    from parsetune.tasks.viggo_values import sentence_of

    rows = read_prepared(data_path, 1)
    if rows:  # the prefix as rendered (instruction + any few-shot examples)
        first = rows[0].input
        rendered = query.format(text=sentence_of(first, query))
        if first.endswith(rendered):
            return PromptFormat(first[: len(first) - len(rendered)], query)
    return PromptFormat(instruction + "\n\n" if instruction else "", query)


class ServedModel:
    """The loaded checkpoint and everything a request needs besides the decode loop."""

    def __init__(self, target: str, dtype: str = "auto", model_name: str | None = None) -> None:
        from transformers import AutoTokenizer

        from eval.compile_cache import enable_compilation_cache
        from eval.constrained import ll_tokenizer
        from eval.generate import base_and_soft_prompt, special_ids
        from eval.generation_model import GenerationModel
        from eval.model_cache import local_model_dir
        from parsetune.hf_files import read_hf_config
        from parsetune.model_families import check_generates

        model_dir, self.run_dir = resolve_target(target)
        self.task = read_run_task(self.run_dir) if self.run_dir else None
        model_dir, soft_prompt = base_and_soft_prompt(model_dir)
        check_generates(model_dir)
        enable_compilation_cache()
        self.model_dir = local_model_dir(model_dir)
        config = read_hf_config(self.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.eos_ids, self.pad_id = special_ids(self.model_dir, config, self.tokenizer)
        self.model = GenerationModel.load(self.model_dir, dtype, soft_prompt=soft_prompt)
        from parsetune.soft_prompt import prefix_ids

        self.prefix = prefix_ids(self.model.model)  # prompt tuning: the virtual ids before every prompt
        self.context_length = int(config.get("max_position_embeddings") or 2048)
        self.name = model_name or os.path.basename(os.path.normpath(target)) or "model"
        self.ll_tok = ll_tokenizer(self.tokenizer, self.model.vocab_size, self.eos_ids)
        self._task_constraint = self._build_task_constraint()
        self._viggo = None
        self._json_constraints: dict = {}  # (kind, schema, description) -> GrammarConstraint, the last 64

    @property
    def prompt_format(self) -> PromptFormat | None:
        return self.task.prompt if self.task else None

    def _build_task_constraint(self):
        from eval.constrained import build_constraint
        from parsetune.tasks.viggo_values import read_grounding

        if self.task is None or self.task.constrain is None:
            return None
        grounding = read_grounding(self.task.data_path) if self.task.constrain == "viggo" and self.task.data_path else None
        schema = self.task.schema_path if self.task.constrain == "json-schema" else None
        if self.task.constrain == "json-schema" and (schema is None or not storage.exists(schema)):
            return None
        return build_constraint(
            self.task.constrain, self.tokenizer, self.model.vocab_size, self.eos_ids, schema, grounding, ll_tok=self.ll_tok
        )  # fmt: skip

    @property
    def task_constraint_description(self) -> str:
        return self._task_constraint.description if self._task_constraint is not None else "none"

    def constraint(self, spec: ConstraintSpec):
        """The ``GrammarConstraint`` for a request's choice (None: unconstrained); a UserError for a
        choice this model cannot serve or an invalid schema."""
        from eval.constrained import (
            JSON_CLOSING, JSON_OBJECT_SCHEMA, JSON_SEPARATOR, GrammarConstraint, build_constraint, schema_grammar,
        )  # fmt: skip
        from eval.serve.schema_check import check_finite_schema

        if spec.kind == "none":
            return None
        if spec.kind == "task":
            return self._task_constraint
        if spec.kind == "viggo":
            if self._task_constraint is not None and self.task is not None and self.task.constrain == "viggo":
                return self._task_constraint  # with the run's learned, grounded values
            if self._viggo is None:
                self._viggo = build_constraint("viggo", self.tokenizer, self.model.vocab_size, self.eos_ids, ll_tok=self.ll_tok)
            return self._viggo
        if spec.kind == "json_object":
            grammar, description = schema_grammar(JSON_OBJECT_SCHEMA, "json_object"), "json_object"
        elif spec.kind == "json_schema":
            grammar = None
            description = f"json_schema ({spec.name})" if spec.name else "json_schema"
        else:
            raise UserError(f"unknown constraint {spec.kind!r}")
        key = (spec.kind, json.dumps(spec.schema, sort_keys=True), description)
        if key not in self._json_constraints:  # clients repeat their schemas: compile each once
            if grammar is None:
                grammar = schema_grammar(spec.schema, "response_format.json_schema.schema")
                check_finite_schema(spec.schema, "response_format.json_schema.schema")
            if len(self._json_constraints) >= 64:
                self._json_constraints.pop(next(iter(self._json_constraints)))
            self._json_constraints[key] = GrammarConstraint(
                self.tokenizer, grammar, self.model.vocab_size, self.eos_ids, closing_chars=JSON_CLOSING,
                separator=JSON_SEPARATOR, description=description, ll_tok=self.ll_tok,
            )  # fmt: skip
        return self._json_constraints[key]

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "task": self.task.task if self.task else None,
            "constraint": self.task_constraint_description,
            "parse": self.prompt_format is not None,
            "context_length": self.context_length,
        }
