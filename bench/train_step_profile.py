"""One training step's gradient, timed and profiled op by op: where does XLA:CPU spend the time?

    python bench/train_step_profile.py --method lora                # parsetune's defaults on CPU
    python bench/train_step_profile.py --method full --stock        # Levanter's own gradient and remat
    python bench/train_step_profile.py --method lora --hlo step.hlo --top 25

Builds a Llama with the shape of ``--model``'s config.json (random weights: timing does not depend
on them), loraized like ``parsetune train`` for ``--method lora``, and times ``jit(value_and_grad)``
of the training loss (pipelines/loss.py) on one batch, with the frozen weights passed as arguments
as in the Trainer. The choices are ``compute:``'s (pipelines/config.py): ``--transpose-free-dots``,
``--gradient-checkpointing``; ``--stock`` sets both to Levanter's behaviour.

``--hlo FILE`` writes the optimised HLO of the step; ``--top N`` profiles one step and prints the N
ops that took longest (summed over the 30 layers), with their output shapes and layouts. On CPU the
profile times fusions, copies and transposes well; matrix products are partly dispatched
asynchronously and under-counted, so compare them by FLOPs and wall time instead.
The optimizer update is not included: bench/train_bench.py measures whole training steps.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def build(args):
    import equinox as eqx
    import haliax as hax
    import jax
    import jax.numpy as jnp
    import numpy as np
    from levanter.layers.attention import AttentionMask
    from levanter.lora import LoraConfig, loraize, lora_trainable_params_filter
    from levanter.models.llama import LlamaConfig, LlamaLMHeadModel
    from levanter.models.lm_model import LmExample
    from transformers import AutoConfig

    from pipelines.config import ComputeConfig
    from pipelines.dot_vjp import use_transpose_free_dots

    compute = ComputeConfig(gradient_checkpointing=args.gradient_checkpointing, transpose_free_dots=args.transpose_free_dots)
    hf = AutoConfig.from_pretrained(args.model)
    config = compute.apply(dataclasses.replace(LlamaConfig.from_hf_config(hf), seq_len=args.seq))
    model = LlamaLMHeadModel.init(hax.Axis("vocab", hf.vocab_size), config, key=jax.random.PRNGKey(0))
    if args.method == "lora":
        model = loraize(model, LoraConfig(target_modules=LORA_TARGETS, r=args.r, alpha=2 * args.r), key=jax.random.PRNGKey(1))
    if compute.use_transpose_free_dots():
        model = use_transpose_free_dots(model)
    trainable = lora_trainable_params_filter(model) if args.method == "lora" else eqx.is_inexact_array
    params, rest = eqx.partition(model, trainable)
    params, not_float = eqx.partition(params, eqx.is_inexact_array)
    frozen, static = eqx.partition(eqx.combine(rest, not_float), eqx.is_array)  # frozen weights are arguments

    Batch, Pos = hax.Axis("batch", args.batch), hax.Axis("position", args.seq)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, hf.vocab_size, (args.batch, args.seq))
    loss_mask = np.zeros((args.batch, args.seq), np.int32)
    loss_mask[:, args.seq // 3 :] = 1  # completion-only training: the last two thirds
    example = LmExample(tokens=hax.named(jnp.asarray(tokens, jnp.int32), (Batch, Pos)),
                        loss_mask=hax.named(jnp.asarray(loss_mask), (Batch, Pos)), attn_mask=AttentionMask.causal())
    from pipelines.loss import rows_need, training_loss

    loss_fn = training_loss(rows_need(loss_mask))

    def loss(params, frozen, example):
        return loss_fn(eqx.combine(params, frozen, static), example).array

    return jax.jit(jax.value_and_grad(loss)), (params, frozen, example), compute


def top_ops(trace_dir: str, hlo_text: str, count: int) -> list[str]:
    trace = json.load(gzip.open(glob.glob(f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz")[-1]))
    total, calls = collections.Counter(), collections.Counter()
    for event in trace["traceEvents"]:
        name = event.get("name", "")
        if event.get("ph") == "X" and "Thunk" not in name and not name.startswith("$"):
            total[name] += event.get("dur", 0)
            calls[name] += 1
    lines = []
    for name, micros in total.most_common(count):
        match = re.search(rf"%{re.escape(name)} = (\S+) (\w[\w-]*)\(", hlo_text)
        shape, op = (match.group(1), match.group(2)) if match else ("?", "?")
        where = re.search(rf"%{re.escape(name)} = .*?op_name=\"([^\"]*)\"", hlo_text)
        origin = where.group(1).split("/")[-3:] if where else []
        lines.append(f"{micros / 1e3:8.1f} ms {calls[name]:4d}x  {name:34s} {op:8s} {shape:28s} {'/'.join(origin)[:90]}")
    return lines


def remat_label(compute) -> str:
    from pipelines.config import SAVE_LINEAR_OUTPUTS

    if compute.gradient_checkpointing is not None:
        return str(compute.gradient_checkpointing).lower()
    return SAVE_LINEAR_OUTPUTS if compute.use_transpose_free_dots() else "levanter default (true)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models/smollm2-135m-instruct"), help="an HF checkpoint dir (only config.json is read)")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one untimed)")
    parser.add_argument("--transpose-free-dots", type=lambda s: s == "true", default=None, help="true|false (default: on for CPU)")
    parser.add_argument("--gradient-checkpointing", default=None, help="true|false|linear_outputs (default: linear_outputs with transpose-free dots)")
    parser.add_argument("--stock", action="store_true", help="Levanter's own gradient and remat")
    parser.add_argument("--hlo", help="write the optimised HLO here")
    parser.add_argument("--top", type=int, default=0, help="profile one step and print the N costliest ops")
    args = parser.parse_args()
    if args.stock:
        args.transpose_free_dots, args.gradient_checkpointing = False, True
    elif args.gradient_checkpointing in ("true", "false"):
        args.gradient_checkpointing = args.gradient_checkpointing == "true"

    import jax

    from pipelines.hooks import peak_rss_mb

    step, inputs, compute = build(args)
    start = time.perf_counter()
    compiled = step.lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    if args.hlo:
        Path(args.hlo).write_text(compiled.as_text())
    jax.block_until_ready(step(*inputs))
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss, _ = jax.block_until_ready(step(*inputs))
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "method": args.method, "batch": args.batch, "seq": args.seq,
        "transpose_free_dots": compute.use_transpose_free_dots(), "gradient_checkpointing": remat_label(compute),
        "compile_s": round(compile_s, 1), "step_s": [round(t, 3) for t in times], "best_s": round(min(times), 3),
        "loss": float(loss), "peak_rss_mb": peak_rss_mb(),
    }))
    if args.top:
        with tempfile.TemporaryDirectory() as trace_dir:
            jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
            jax.block_until_ready(step(*inputs))
            jax.profiler.stop_trace()
            print("\n".join(top_ops(trace_dir, compiled.as_text(), args.top)))


if __name__ == "__main__":
    main()
