"""Decode speed of a fine-tuned model under its task's grammar, for draft tokens K × batch size.

Times ``eval.generate.decode_records`` (the loop of ``eval generate`` and of the task metrics during
training) on the same validation rows for every setting, after a warm-up batch that compiles, and
checks that every setting gives the same predictions. Results: docs/benchmarks.md.

    PYTHONPATH=. python bench/decode_settings.py --model runs/smollm2-lora/hf \\
        --data runs/smollm2-lora/prep/validation.jsonl --rows 300:364 --drafts 0,1,2 --batches 8,16,32
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF checkpoint directory")
    ap.add_argument("--data", required=True, help="prepared split (its manifest.json grounds the ViGGO grammar)")
    ap.add_argument("--rows", default="300:364", help="slice of the split's rows [300:364]")
    ap.add_argument("--drafts", default="0,1,2", help="comma-separated draft-token settings K [0,1,2]")
    ap.add_argument("--batches", default="8,16,32", help="comma-separated batch sizes [8,16,32]")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from eval.constrained import build_constraint
    from eval.generate import decode_records, special_ids
    from eval.generation_model import GenerationModel
    from parsetune.hf_files import read_hf_config
    from parsetune.records import read_prepared
    from parsetune.tasks.viggo_values import read_grounding

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    eos, pad = special_ids(args.model, read_hf_config(args.model), tokenizer)
    model = GenerationModel.load(args.model)
    first, last = (int(x) for x in args.rows.split(":"))
    records = read_prepared(args.data)[first:last]
    grounding = read_grounding(args.data)
    reference = None
    for k in [int(v) for v in args.drafts.split(",")]:
        for batch in [int(v) for v in args.batches.split(",")]:
            constraint = build_constraint("viggo", tokenizer, model.vocab_size, eos, grounding=grounding)
            decode_records(model, tokenizer, records[:batch], eos, pad, constraint, batch, args.max_new_tokens, k)  # compiles
            start = time.perf_counter()
            predictions, _, stats = decode_records(model, tokenizer, records, eos, pad, constraint, batch, args.max_new_tokens, k)
            seconds = time.perf_counter() - start
            reference = reference or predictions
            print(
                f"K={k} batch={batch}: {seconds:.1f} s for {len(records)} rows, {stats.steps} steps, "
                f"{stats.tokens_per_step:.2f} tokens per step, same predictions as the first setting: {predictions == reference}",
                flush=True,
            )


if __name__ == "__main__":
    main()
