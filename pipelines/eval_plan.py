"""What ``parsetune run`` evaluates with: the output task, the constraint and the JSON Schema, decided
and checked before any heavy work.

- The output task follows ``prep.task`` (``parsetune.tasks.output_task``): ``viggo`` writes meaning
  representations, ``json`` and ``viggo-json`` write JSON objects.
- ``eval.constrain`` must fit it: ``viggo`` (the MR grammar) only for ViGGO MRs, ``json-schema``
  only for JSON; a mix is a one-line error before step 1.
- The schema of a JSON task: ``eval.schema`` when given, else the one the run's own prep step writes
  beside the prepared data (``RUN_DIR/prep/schema.json``: the ``prep.schema`` file of task json, the
  schema task viggo-json derives from its train split). ``json-schema`` without any schema is an
  error before step 1. It scores schema adherence even when decoding is unconstrained.
- After prep and before training, every prepared target must satisfy an ``eval.schema`` given
  apart from prep's (else no constrained output could ever be right): one line naming file and row.
"""

from __future__ import annotations

from dataclasses import dataclass

from parsetune import storage
from parsetune.errors import UserError
from parsetune.tasks import output_task


@dataclass(frozen=True)
class EvalPlan:
    task: str  # output task: viggo | json (how predictions are scored)
    constrain: str | None  # viggo | json-schema | None
    schema: str | None  # an explicit eval.schema; None: prep's own (when from_prep) or none
    from_prep: bool  # the schema is the one the prep step writes (known only after it)

    def schema_after_prep(self, prep_dir: str) -> str | None:
        """The schema file for decoding and scoring, once ``prep_dir`` is prepared."""
        if not self.from_prep:
            return self.schema
        from parsetune.tasks.json_form import prepared_schema_path

        path = prepared_schema_path(prep_dir)
        if path is None or not storage.exists(path):
            raise UserError(f"{prep_dir}: the prepared set names no JSON Schema (prepared by an older parsetune?); delete it to prepare it again")
        return path


def plan_eval(config) -> EvalPlan:
    """The plan for ``config`` (a ``TrainConfig``); ``UserError`` (one line) for settings that do not fit."""
    from eval.constrained import CONSTRAINTS

    p, e = config.prep, config.eval
    task = output_task(p.task)
    if e.constrain is not None and e.constrain not in CONSTRAINTS:
        raise UserError(f"eval.constrain: unknown constraint {e.constrain!r}; expected one of {', '.join(CONSTRAINTS)} or null")
    if task == "json" and e.constrain == "viggo":
        raise UserError(
            f"eval.constrain: viggo is the ViGGO meaning-representation grammar, but task {p.task} writes JSON; "
            "use eval.constrain: json-schema (or null for no constraint)"
        )
    if task == "viggo" and e.constrain == "json-schema":
        raise UserError("eval.constrain: json-schema constrains JSON, but task viggo writes meaning representations; use eval.constrain: viggo (or null)")
    if task == "viggo" and e.schema:
        raise UserError(f"eval.schema ({e.schema}) is for JSON tasks; task viggo has no schema")
    if task == "viggo":
        return EvalPlan(task, e.constrain, None, False)
    from parsetune.tasks.json_form import load_json_schema

    if p.schema:
        load_json_schema(p.schema)  # exists and is a schema: one line now rather than at step 2
    if e.schema:
        load_json_schema(e.schema)
        if e.constrain == "json-schema":
            from eval.constrained import json_schema_grammar

            json_schema_grammar(e.schema)  # llguidance can compile it
        return EvalPlan(task, e.constrain, e.schema, False)
    from_prep = p.task == "viggo-json" or bool(p.schema)
    if e.constrain == "json-schema" and not from_prep:
        raise UserError(
            f"eval.constrain: json-schema needs a JSON Schema: set eval.schema or prep.schema "
            f"(task viggo-json derives one from its train split); task {p.task} has neither"
        )
    return EvalPlan(task, e.constrain, None, from_prep)


def check_targets(schema_path: str, data_paths: list[str]) -> None:
    """Every prepared target in ``data_paths`` satisfies the schema at ``schema_path``; else one line
    naming the schema, the file and the row."""
    from parsetune.jsonl import read_jsonl_rows
    from parsetune.tasks.json_form import load_json_schema, loads_strict, make_validator, schema_violation

    validator = make_validator(load_json_schema(schema_path))
    for path in data_paths:
        for line, row in read_jsonl_rows(path):
            try:
                target = loads_strict(row.get("output", ""))
            except ValueError:
                raise UserError(f"{path}:{line}: target (id {row.get('id')!r}) is not valid JSON") from None
            problem = schema_violation(target, validator)
            if problem is not None:
                raise UserError(f"{schema_path}: the target of {path}:{line} (id {row.get('id')!r}) does not satisfy it {problem}")
