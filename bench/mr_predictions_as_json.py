"""Score a ViGGO MR run with the JSON track's metrics, to compare the two output formats on equal terms.

Each MR prediction and reference becomes the JSON object the ViGGO-as-JSON task trains on (the same
``prep.viggo_json.mr_to_json`` rules, learned from the MR run's own prepared train split), then
``parsetune eval score --task json`` scores them against the JSON run's schema: field precision /
recall / F1 and exact match mean the same thing for both runs.

    python bench/mr_predictions_as_json.py --mr-run runs/smollm2-lora --schema runs/json/prep/schema.json --out mr_as_json
"""

from __future__ import annotations

import argparse
import json
import os
import sys



def compact(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def tolerant_json(mr_text: str, types) -> dict:
    """``mr_to_json``, except that a predicted value the JSON type cannot hold (a grounded span such as
    ``release_year[this]``) stays a string: schema-invalid and a wrong field, as it would be in JSON."""
    from parsetune.errors import UserError
    from parsetune.tasks.viggo_mr import ATTRIBUTES, parse_mr
    from prep.viggo_json import INTENT, _value, mr_to_json

    try:
        return mr_to_json(mr_text, types)
    except UserError:
        mr = parse_mr(mr_text)
        given = dict(mr.attributes)
        obj = {INTENT: mr.function}
        for name in ATTRIBUTES:
            if name in given:
                try:
                    obj[name] = _value(name, given[name], types.attributes.get(name), "prediction")
                except UserError:
                    obj[name] = given[name]
        return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mr-run", required=True, help="a ViGGO MR run dir (prep/train.jsonl, eval/validation/predictions.jsonl)")
    parser.add_argument("--schema", required=True, help="the ViGGO-as-JSON run's prep/schema.json")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from eval.score import score_predictions
    from parsetune.manifest import read_manifest
    from parsetune.records import read_prepared
    from parsetune.tasks.viggo_values import sentence_of
    from prep.viggo_json import learn_types, mr_to_json

    prep = os.path.join(args.mr_run, "prep")
    query = read_manifest(prep)["prompt"]["query"]
    types = learn_types((sentence_of(r.input, query), r.output) for r in read_prepared(os.path.join(prep, "train.jsonl")))
    rows = [json.loads(line) for line in open(os.path.join(args.mr_run, "eval", "validation", "predictions.jsonl"), encoding="utf-8")]
    os.makedirs(args.out, exist_ok=True)
    converted = os.path.join(args.out, "predictions.jsonl")
    with open(converted, "w", encoding="utf-8") as f:
        for row in rows:
            reference = compact(mr_to_json(row["reference"], types, f"{row['id']} reference"))
            f.write(json.dumps({**row, "reference": reference, "prediction": compact(tolerant_json(row["prediction"], types))}, ensure_ascii=False) + "\n")
    metrics = score_predictions(converted, os.path.join(args.out, "scores"), task="json", schema_path=args.schema)
    keys = ("n", "valid_json_rate", "schema_adherence_rate", "field_precision", "field_recall", "field_f1", "exact_match")
    print(json.dumps({k: metrics.get(k) for k in keys}, indent=2), file=sys.stdout)


if __name__ == "__main__":
    main()
