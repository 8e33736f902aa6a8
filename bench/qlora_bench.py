"""LoRA on a float base vs on an int8 / nf4 quantized base (``method.quantize_base``), side by side
in one run: bytes of the frozen base weights, peak RSS, training tokens/s, and the training loss
after the same steps on the same batches.

    python bench/qlora_bench.py --config configs/viggo/smollm2_lora_cpu.yaml \
        --data runs/smollm2-lora/prep --steps 24 [--json out.json]

Each kind trains in its own ``parsetune train`` process (the real trainer, the config's recipe, no
export, no task metrics), so peak RSS is per kind. Tokens/s counts real tokens over the steps after
the first ``--warmup`` (which include compilation). The base bytes are measured in this process on
the same model (loraized, then quantized). Accuracy is not measured here: it needs a full
``parsetune run`` per kind (``--method.quantize_base nf4``), see docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KINDS = ("f32", "int8", "nf4")


def base_bytes(model_dir: str) -> dict[str, int]:
    import haliax as hax
    import jax
    import jax.numpy as jnp
    from levanter.lora import LoraConfig
    from levanter.trainer import TrainerConfig

    from parsetune.model_families import converter_for_checkpoint
    from pipelines.config import DEFAULT_LORA_TARGETS
    from pipelines.levanter_compat import loraize_from_base
    from pipelines.quantized_base import base_weight_bytes, quantize_base

    config = TrainerConfig(require_accelerator=False)
    with hax.partitioning.set_mesh(config.device_mesh), hax.axis_mapping(config.parameter_axis_mapping):
        converter = converter_for_checkpoint(model_dir)
        model = converter.load_pretrained(converter.default_config.model_type, config=converter.default_config, dtype=jnp.float32)
        model = loraize_from_base(model, LoraConfig(target_modules=DEFAULT_LORA_TARGETS, r=16, alpha=32), jax.random.PRNGKey(0))
        out = {"f32": base_weight_bytes(model)}
        for kind in KINDS[1:]:
            out[kind] = base_weight_bytes(hax.named_jit(lambda m, k=kind: quantize_base(m, k))(model))
    return out


def train_kind(config: str, data: Path, kind: str, steps: int, warmup: int, root: Path) -> dict:
    run_dir = root / kind
    overrides = [
        "--run_dir", str(run_dir), "--data.train", str(data / "train.jsonl"), "--data.validation", str(data / "validation.jsonl"),
        "--trainer.num_train_steps", str(steps), "--trainer.steps_per_eval", str(10 * steps), "--task_eval.examples", "0",
        "--export", "false", "--wandb_mode", "disabled", "--trainer.checkpointer.save_interval", "1000m",
    ]  # fmt: skip
    if kind != "f32":
        overrides += ["--method.quantize_base", kind]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "parsetune", "train", config, *overrides], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{kind}: parsetune train failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if "train_loss" in r]
    timed = [r for r in steps_rows if r["step"] >= warmup]
    return {
        "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["step_s"] for r in timed),
        "step_s_median": statistics.median(r["step_s"] for r in timed),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in steps_rows),
        "final_train_loss": steps_rows[-1]["train_loss"],
        "mean_loss_last_quarter": statistics.fmean(r["train_loss"] for r in steps_rows[-max(1, len(steps_rows) // 4) :]),
        "process_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/viggo/smollm2_lora_cpu.yaml")
    parser.add_argument("--data", required=True, help="a prepared ViGGO dir (train.jsonl, validation.jsonl)")
    parser.add_argument("--model", default="models/smollm2-135m-instruct", help="for the base-bytes measurement (the config's model trains)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--json")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    sizes = base_bytes(args.model)
    results = {}
    with tempfile.TemporaryDirectory(prefix="qlora-bench-") as root:
        for kind in kinds:
            results[kind] = {"base_bytes": sizes[kind], **train_kind(args.config, Path(args.data), kind, args.steps, args.warmup, Path(root))}
            print(f"{kind}: {results[kind]}", file=sys.stderr, flush=True)
    ref = results.get("f32")
    print(f"\n{args.steps} steps of {args.config} (timed after {args.warmup}); ratios against f32\n")
    print("| base | base linear weights MB | peak RSS MB | tokens/s | median step s | loss, last quarter of steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, r in results.items():
        ratio = lambda key: f" ({r[key] / ref[key]:.2f}x)" if ref and kind != "f32" else ""  # noqa: E731
        print(
            f"| {kind} | {r['base_bytes'] / 1e6:.1f}{ratio('base_bytes')} | {r['peak_rss_mb']}{ratio('peak_rss_mb')} | "
            f"{r['tokens_per_s']:.0f}{ratio('tokens_per_s')} | {r['step_s_median']:.2f} | {r['mean_loss_last_quarter']:.4f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "config": args.config, "results": results}, indent=2))


if __name__ == "__main__":
    main()
