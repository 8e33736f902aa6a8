"""`parsetune eval generate` (JAX, the trainer's Levanter model) vs transformers `generate`, side by side.

    PYTHONPATH=. python bench/generate_bench.py --model models/smollm2-135m-instruct \
        --data runs/smollm2-lora/prep/validation.jsonl --limit 128 --batch-size 8 --max-new-tokens 64 --out /tmp/bench

For unconstrained and ``--constrain viggo`` decoding: HF ``generate(do_sample=False)`` (left
padding, the same length-sorted batches; with ``viggo`` the same llguidance constraint through a
``LogitsProcessor``) against JAX in fresh processes with an empty persistent compilation cache:
a first run (compiles, fills the cache), a second run (what a user's next run costs: compiled
programs come from the cache; the bench checks that it wrote no new entry) and, in that second
process, a repeat (after compilation). Times are the generation loop's (model loading excluded on
both sides); ratios are HF seconds / JAX seconds. Also counts identical predictions.

The machine may be shared: with ``--interleave`` each batch is decoded by JAX and then by HF
back to back (JAX compiled beforehand, compile time reported apart), so both see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import time


class GrammarLogitsProcessor:
    """transformers ``LogitsProcessor`` applying our llguidance constraint (``eval.constrained``: the
    same grammar, masks and closing rule as ``eval generate --constrain``) to HF ``generate``."""

    def __init__(self, constraint, prompt_width: int, max_new_tokens: int, eos_ids):
        self.constraint, self.prompt_width, self.max_new_tokens, self.eos_ids = constraint, prompt_width, max_new_tokens, set(eos_ids)

    def __call__(self, input_ids, scores):
        import numpy as np
        import torch

        rows, step = input_ids.shape[0], input_ids.shape[1] - self.prompt_width
        if step == 0:
            self.constraint.start(rows)
            self.done = [False] * rows
        else:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if not self.done[row]:
                    if token in self.eos_ids:
                        self.done[row] = True
                    else:
                        self.constraint.consume(row, token)
        vocab = scores.shape[1]
        bitmask = np.zeros((rows, (vocab + 31) // 32), np.int32)
        bitmask.fill(-1)
        for row in range(rows):
            if not self.done[row]:
                self.constraint.fill_masks(row, [], bitmask[row : row + 1], self.max_new_tokens - step)
        allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab].astype(bool)
        allowed[self.done] = True  # finished rows are padded by generate anyway
        return scores.masked_fill(~torch.from_numpy(allowed), float("-inf"))


def hf_generate(model_dir, data, limit, batch_size, max_new_tokens, constrain=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    from eval.constrained import build_constraint
    from eval.generate import read_prompts

    records = read_prompts(data, limit)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    eos_ids = [tok.eos_token_id]
    constraint = build_constraint(constrain, tok, model.config.vocab_size, eos_ids) if constrain else None
    order = sorted(range(len(records)), key=lambda i: len(tok(records[i].input)["input_ids"]))
    preds = [None] * len(records)
    start = time.perf_counter()
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        enc = tok([records[i].input for i in rows], return_tensors="pt", padding=True)
        processors = LogitsProcessorList(
            [GrammarLogitsProcessor(constraint, enc["input_ids"].shape[1], max_new_tokens, eos_ids)] if constraint else []
        )
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=eos_ids, logits_processor=processors)
        for i, seq in zip(rows, out[:, enc["input_ids"].shape[1] :]):
            preds[i] = tok.decode(seq, skip_special_tokens=True).strip()
    return preds, time.perf_counter() - start


def interleaved(model_dir, data, limit, batch_size, max_new_tokens):
    """Per-batch alternation JAX / HF on identical token ids; returns a dict of timings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.compile_cache import enable_compilation_cache
    from eval.decoding import BatchDecoder, bucket_length
    from eval.generate import prompt_bucket, read_prompts, special_ids
    from parsetune.hf_files import read_hf_config
    from eval.generation_model import GenerationModel

    enable_compilation_cache()
    records = read_prompts(data, limit)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = sorted((tok(r.input)["input_ids"] for r in records), key=len)
    eos, pad = special_ids(model_dir, read_hf_config(model_dir), tok)
    bucket = prompt_bucket(len(ids[-1]))
    decoder = BatchDecoder(GenerationModel.load(model_dir), eos, pad, max_new_tokens,
                            bucket_length(len(ids[-1]), bucket) + max_new_tokens, bucket)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    start = time.perf_counter()
    for batch in batches:  # compile every prompt bucket once
        decoder.generate(batch)
    compile_and_first = time.perf_counter() - start
    t_jax = t_hf = 0.0
    same = 0
    for batch in batches:
        t0 = time.perf_counter()
        got = decoder.generate(batch)
        t1 = time.perf_counter()
        width = max(len(b) for b in batch)
        input_ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch])
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        t2 = time.perf_counter()
        t_jax += t1 - t0
        t_hf += t2 - t1
        for g, seq in zip(got, out[:, width:].tolist()):
            ref = seq[: seq.index(eos[0]) + 1] if eos[0] in seq else seq
            same += ref == g.tokens + [eos[0]] * g.stopped_at_eos
    n = len(ids)
    return {"n": n, "jax_warm_examples_per_second": n / t_jax, "hf_examples_per_second": n / t_hf,
            "speedup_warm": t_hf / t_jax, "jax_first_pass_seconds_incl_compile": compile_and_first,
            "speedup_incl_compile": t_hf / (t_jax + max(0.0, compile_and_first - t_jax)),
            "token_identical_rows": same}


def jax_worker(args) -> None:
    """One fresh process (as a user's run): generate twice in-process; print both timings as JSON.
    The first call includes compilation (or loading it from the persistent cache), the second is
    after compilation."""
    from eval.generate import generate_predictions

    timings = []
    for attempt in range(2):
        path = os.path.join(args.out, f"jax_{args.constrain or 'none'}_k{args.worker_draft_tokens}_{attempt}.jsonl")
        stats = generate_predictions(args.model, args.data, path, args.batch_size, args.max_new_tokens, args.limit,
                                     args.constrain, progress=False, draft_tokens=args.worker_draft_tokens)
        timings.append(stats.seconds)
    print("RESULT " + json.dumps({"first_call_seconds": timings[0], "after_compile_seconds": timings[1], "path": path,
                                  "tokens_per_step": stats.tokens_per_step}))


def run_jax_process(args, constrain, cache_dir, draft_tokens) -> dict:
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--data", args.data, "--out", args.out,
           "--limit", str(args.limit), "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
           "--worker-draft-tokens", str(draft_tokens)]
    if constrain:
        cmd += ["--constrain", constrain]
    env = {**os.environ, "PARSETUNE_COMPILATION_CACHE": cache_dir}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def cache_entries(cache_dir: str) -> int:
    return sum(len(files) for _, _, files in os.walk(cache_dir))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--constrain", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-draft-tokens", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--draft-tokens", default="0,2", help="comma-separated prompt-lookup settings to run [0,2]")
    ap.add_argument("--modes", default="none,viggo", help="comma-separated: none (unconstrained), viggo [none,viggo]")
    ap.add_argument("--interleave", action="store_true", help="only the per-batch JAX/HF alternation")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.worker:
        jax_worker(args)
        return
    if args.interleave:
        print(json.dumps(interleaved(args.model, args.data, args.limit, args.batch_size, args.max_new_tokens), indent=2))
        return
    import tempfile

    report = {}
    for constrain in [None if m == "none" else m for m in args.modes.split(",")]:
        label = constrain or "unconstrained"
        hf_preds, hf_seconds = hf_generate(args.model, args.data, args.limit, args.batch_size, args.max_new_tokens, constrain)
        report[label] = {"hf_seconds": round(hf_seconds, 1)}
        for k in [int(v) for v in args.draft_tokens.split(",")]:
            cache_dir = tempfile.mkdtemp(prefix="xla-cache-")
            cold = run_jax_process(args, constrain, cache_dir, k)  # compiles and fills the persistent cache
            entries = cache_entries(cache_dir)
            warm = run_jax_process(args, constrain, cache_dir, k)  # a second run: compilation from the cache
            hits = cache_entries(cache_dir) == entries  # nothing new written: every program came from the cache
            jax_preds = [json.loads(line)["prediction"] for line in open(warm["path"])]
            report[label][f"draft_tokens={k}"] = {
                "jax_first_run_seconds": round(cold["first_call_seconds"], 1),
                "jax_second_run_seconds": round(warm["first_call_seconds"], 1),
                "jax_after_compile_seconds": round(warm["after_compile_seconds"], 1),
                "tokens_per_step": warm["tokens_per_step"],
                "cache_entries": entries,
                "second_run_only_cache_hits": hits,
                "ratio_first_run": round(hf_seconds / cold["first_call_seconds"], 2),
                "ratio_second_run_incl_compile": round(hf_seconds / warm["first_call_seconds"], 2),
                "ratio_after_compile": round(hf_seconds / warm["after_compile_seconds"], 2),
                "identical_predictions": f"{sum(a == b for a, b in zip(hf_preds, jax_preds))}/{len(hf_preds)}",
            }
            print(label, k, json.dumps(report[label][f"draft_tokens={k}"]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
