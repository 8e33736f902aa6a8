"""Training throughput, side by side in one run: parsetune (Levanter on JAX) vs HF transformers +
PEFT on torch, same model, same packed batches, same LoRA targets, float32, this machine.

    python bench/train_bench.py --model models/smollm2-135m-instruct --data data/viggo/train.jsonl

Each measurement runs in its own process. Peak RSS is reported twice: up to the end of the last
training step (parsetune's metrics.jsonl, torch's own), and for the whole process (parsetune's
includes writing its final checkpoint, which torch's loop does not do). Tokens/s counts real
(non-pad) tokens over the timed steps (the first --warmup steps, which include compilation, are
not timed). Prints a table and the parsetune/torch ratios; --json writes them too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LEVANTER_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def packed_batches(model: str, data: str, batch: int, seq: int, steps: int):
    """The exact sequences both stacks train on (parsetune's packing, shuffle seed 0)."""
    from transformers import AutoTokenizer

    from pipelines.data import drop_too_long, epoch_order, pack, read_prepared, shuffled, tokenize_rows

    tokenizer = AutoTokenizer.from_pretrained(model)
    examples, _ = drop_too_long(tokenize_rows(read_prepared(data), tokenizer, tokenizer.eos_token_id), seq)
    packed = pack(shuffled(examples, 0), seq, tokenizer.pad_token_id)
    order = epoch_order(len(packed), steps, batch, 0)
    return packed, order


def torch_worker(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    packed, order = packed_batches(args.model, args.data, args.batch, args.seq, args.steps)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.config.use_cache = False
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=LORA_TARGETS))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    timed_tokens, timed_seconds = 0, 0.0
    for step in range(args.steps):
        rows = order[step * args.batch : (step + 1) * args.batch]
        tokens = torch.tensor(packed.tokens_NxL[rows], dtype=torch.long)
        mask = torch.tensor(packed.loss_mask_NxL[rows], dtype=torch.bool)
        labels = torch.full_like(tokens, -100)
        labels[:, 1:] = torch.where(mask[:, :-1], tokens[:, 1:], torch.tensor(-100))  # HF shifts labels itself
        start = time.perf_counter()
        loss = model(input_ids=tokens, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            timed_tokens += int(packed.real_tokens_N[rows].sum())
            timed_seconds += elapsed
    import resource  # not pipelines.hooks.peak_rss_mb: importing it would load JAX into torch's process

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": timed_tokens / timed_seconds, "final_loss": float(loss), "training_peak_rss_mb": peak_mb}


STOCK_LEVANTER = ["--compute.transpose_free_dots", "false", "--compute.gradient_checkpointing", "true"]


def parsetune_worker(args) -> dict:
    from pipelines.train import parse_config, train

    if args.levanter_loss:  # A/B: Levanter's full-vocabulary loss instead of pipelines/loss.py
        import pipelines.loss
        from levanter.models.lm_model import compute_next_token_loss

        pipelines.loss.training_loss = lambda positions_per_row: compute_next_token_loss

    run_dir = tempfile.mkdtemp(prefix="bench-parsetune-")
    method = ["--method.r", str(args.r), "--method.alpha", str(args.alpha), "--method.target_modules", LEVANTER_TARGETS] if args.method == "lora" else []
    overrides = [
        "--model", args.model, "--data.train", args.data, "--data.validation", "null", "--data.max_seq_len", str(args.seq),
        "--trainer.train_batch_size", str(args.batch), "--trainer.num_train_steps", str(args.steps), "--epochs", "null",
        "--run_dir", run_dir, "--export", "false", "--wandb_mode", "disabled",
        "--trainer.checkpointer.save_interval", "10000m", "--trainer.checkpointer.keep", "[]",
        "--optimizer.learning_rate", "1e-4", "--optimizer.warmup", "0",
        *method, *(STOCK_LEVANTER if args.worker == "stock" else []), *args.parsetune_args,
    ]
    train(parse_config(str(REPO / f"configs/viggo/smollm2_{args.method}_cpu.yaml"), overrides))
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if "train_loss" in line]
    timed = [r for r in rows if r["step"] >= args.warmup]
    return {"tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["step_s"] for r in timed), "final_loss": rows[-1]["train_loss"],
            "training_peak_rss_mb": rows[-1]["peak_rss_mb"]}  # before the final checkpoint is written


def measure(stack: str, method: str, args) -> dict:
    """Run one worker in a fresh process; returns its result plus peak RSS (MB) and wall time."""
    command = [sys.executable, __file__, "--worker", stack, "--method", method, "--model", args.model, "--data", args.data,
               "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq), "--warmup", str(args.warmup),
               "--r", str(args.r), "--alpha", str(args.alpha)]
    if args.levanter_loss:
        command += ["--levanter-loss"]
    if args.parsetune_args:
        command += ["--parsetune-args", *args.parsetune_args]
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{stack} {method} failed (status {status}): {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--data", default="data/viggo/train.jsonl")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (compilation)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--stacks", default="torch,parsetune",
                        help="which stacks to measure: torch, parsetune, stock (parsetune with Levanter's own gradient and remat)")
    parser.add_argument("--levanter-loss", action="store_true", help="parsetune with Levanter's stock loss (A/B of pipelines/loss.py)")
    parser.add_argument("--parsetune-args", nargs=argparse.REMAINDER, default=[], help="extra `parsetune train` overrides")
    parser.add_argument("--worker", choices=["torch", "parsetune", "stock"], help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = (torch_worker if args.worker == "torch" else parsetune_worker)(args)
        print(json.dumps(result))
        return
    results = {}
    for method in args.methods.split(","):
        for stack in args.stacks.split(","):
            results[f"{stack}/{method}"] = measure(stack, method, args)
            r = results[f"{stack}/{method}"]
            print(f"{stack:10s} {method:5s} {r['tokens_per_s']:8.1f} tok/s  peak RSS training {r['training_peak_rss_mb']:6.0f} MB, "
                  f"whole process {r['peak_rss_mb']:6.0f} MB  (final loss {r['final_loss']:.3f}, {r['wall_s']:.0f} s)", flush=True)
    print(f"\nbatch {args.batch} x {args.seq} tokens, {args.steps} steps ({args.warmup} untimed), float32, {os.cpu_count()} CPUs")
    for method in args.methods.split(","):
        if f"torch/{method}" not in results or f"parsetune/{method}" not in results:
            continue
        ours, theirs = results[f"parsetune/{method}"], results[f"torch/{method}"]
        print(f"{method}: parsetune / torch tokens/s = {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x, "
              f"peak RSS while training {ours['training_peak_rss_mb']:.0f} vs {theirs['training_peak_rss_mb']:.0f} MB "
              f"(whole process, parsetune's incl. its final checkpoint: {ours['peak_rss_mb']:.0f} vs {theirs['peak_rss_mb']:.0f} MB)")
    for method in args.methods.split(","):
        if f"stock/{method}" in results and f"parsetune/{method}" in results:
            ours, stock = results[f"parsetune/{method}"], results[f"stock/{method}"]
            print(f"{method}: parsetune / stock Levanter tokens/s = {ours['tokens_per_s'] / stock['tokens_per_s']:.2f}x, "
                  f"final loss {ours['final_loss']:.4f} vs {stock['final_loss']:.4f} "
                  f"({(ours['final_loss'] - stock['final_loss']) / stock['final_loss'] * 100:+.2f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
