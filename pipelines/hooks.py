"""Training hooks: RUN_DIR/metrics.jsonl, a console progress bar, and the validation loss."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field

import haliax as hax
import jax.numpy as jnp
import numpy as np
from levanter.callbacks import Callback
from tqdm import tqdm

from parsetune import storage


@dataclass
class MetricsLog:
    """Rows of ``metrics.jsonl``: one per step (``step``, ``train_loss``, ``tokens_per_s``, ...),
    plus ``eval_loss`` rows. Kept in memory and rewritten whole (gs:// objects cannot be appended to)."""

    path: str
    flush_every: int = 1
    rows: list[dict] = field(default_factory=list)
    writer: bool = True  # False on every host but the chief: rows are kept, never written

    @classmethod
    def resume(cls, path: str, completed_steps: int, flush_every: int = 1, writer: bool = True) -> "MetricsLog":
        """Keep the rows of the steps already completed (a resumed run redoes the later steps)."""
        rows = []
        if completed_steps > 0 and storage.exists(path):
            rows = [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
            rows = [r for r in rows if r["step"] < completed_steps]
        return cls(path, flush_every, rows, writer)

    def add(self, row: dict, force_flush: bool = False) -> None:
        self.rows.append(row)
        if force_flush or len(self.rows) % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        if not self.writer:
            return
        storage.write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


class StepLogger:
    """Per-step hook: loss, real (non-pad) tokens/s, a tqdm bar, and the tracker (W&B).

    ``step`` is Levanter's 0-based step index (checkpoint ``step-N`` holds the state after step N).
    """

    def __init__(
        self, log: MetricsLog, real_tokens_per_step: np.ndarray, total_steps: int, start_step: int, show: bool = True, flops=None
    ):
        self.log = log
        self.flops = flops  # a StepFlops: model FLOPs and MFU of each step (None: not logged)
        self.real_tokens_per_step = real_tokens_per_step
        self.total_steps = total_steps
        self.bar = tqdm(
            total=total_steps, initial=start_step, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True, disable=not show
        )
        self.last_step = start_step - 1

    def __call__(self, info) -> None:
        import levanter.tracker

        step = info.step
        if step <= self.last_step:  # the trainer forces hooks once more after the last step
            return
        self.last_step = step
        loss = float(info.loss)
        tokens = int(self.real_tokens_per_step[step])
        tokens_per_s = tokens / info.step_duration if info.step_duration > 0 else math.nan
        row = {"step": step, "train_loss": loss, "tokens": tokens, "tokens_per_s": round(tokens_per_s, 2), "step_s": round(info.step_duration, 4),
               "peak_rss_mb": peak_rss_mb()}
        tracked = {"train/loss": loss, "throughput/real_tokens_per_s": tokens_per_s, "system/peak_rss_mb": row["peak_rss_mb"]}
        if self.flops is not None and info.step_duration > 0:
            report = self.flops.of_step(info.step_duration)
            row["model_tflops_per_s"] = round(report.achieved_flops_per_second / 1e12, 6)
            tracked["throughput/model_tflops_per_s"] = report.achieved_flops_per_second / 1e12
            if report.mfu is not None:
                row["mfu"] = round(report.mfu, 4)
                tracked["throughput/mfu"] = report.mfu
        self.log.add(row, force_flush=info.next_step == self.total_steps)
        levanter.tracker.log(tracked, step=info.step)
        self.bar.update(info.next_step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}")
        if info.next_step >= self.total_steps:
            self.bar.close()


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (host RAM: on CPU that includes the model)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak / 1024 if sys.platform != "darwin" else peak / 2**20)  # KiB on Linux, bytes on macOS


@dataclass(frozen=True)
class StepFlops:
    """What MFU needs to know about every step: tokens computed (padding included), model FLOPs per
    token (pipelines/mfu.py), the devices and their peak (the table's, or a measured one on CPU)."""

    tokens_per_step: int
    flops_per_token: float
    device_kind: str
    num_devices: int
    dtype: str
    peak_per_device: float | None = None

    def of_step(self, step_seconds: float):
        from pipelines.mfu import step_mfu

        return step_mfu(
            self.tokens_per_step, step_seconds, self.flops_per_token, self.device_kind, self.num_devices, self.dtype, self.peak_per_device
        )


def masked_mean_loss(model, example) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Sum of per-token losses over the loss mask, and the number of masked tokens."""
    from levanter.models.lm_model import compute_next_token_loss

    per_token = compute_next_token_loss(model, example, reduction=None)
    mask = example.loss_mask
    return hax.sum(per_token * mask).scalar(), hax.sum(mask).scalar()


class EvalLoss(Callback):
    """Completion-only loss on the validation sequences after every ``every`` completed steps and at the end.
    Register with ``add_hook(..., every=1)``: it decides itself when to run."""

    def __init__(self, log: MetricsLog, batches: list, compute_axis_mapping, every: int, show: bool = True):
        self.log = log
        self.show = show
        self.batches = batches
        self.every = max(1, every)
        self._fn = hax.named_jit(masked_mean_loss, axis_resources=compute_axis_mapping)
        self.last_step = -1

    def evaluate(self, model) -> float:
        total, count = 0.0, 0.0
        for batch in self.batches:
            s, n = self._fn(model, batch)
            total += float(s)
            count += float(n)
        return total / max(count, 1.0)

    def on_step(self, info, force: bool = False) -> None:
        import levanter.tracker

        if info.next_step == self.last_step or (info.next_step % self.every and not force):
            return
        self.last_step = info.next_step
        loss = self.evaluate(info.eval_model)
        self.log.add({"step": info.step, "eval_loss": loss}, force_flush=True)
        levanter.tracker.log({"eval/loss": loss}, step=info.step)
        if self.show:
            tqdm.write(f"after {info.next_step} steps: eval loss {loss:.4f}", file=sys.stderr)


class CheckpointHook(Callback):
    """Levanter's checkpointer, also saving after the last step (the trainer's final forced call
    reaches plain function hooks without ``force``). Whenever a checkpoint is written, the metrics
    log is flushed too, so a resumed run finds the rows of every step it will not redo."""

    def __init__(self, checkpointer, log: MetricsLog):
        self.checkpointer = checkpointer
        self.log = log

    def on_step(self, info, force: bool = False) -> None:
        if force:  # the final save: permanent (levanter_compat fix 8)
            from pipelines.levanter_compat import save_forced_checkpoint

            save_forced_checkpoint(self.checkpointer, info)
        else:
            self.checkpointer.on_step(info, force=False)
        if getattr(self.checkpointer, "_last_save_step", None) == info.step:
            self.log.flush()
        if force:
            self.checkpointer.wait_until_finished()


KILL_AFTER_STEP_ENV = "PARSETUNE_FAULT_KILL_AFTER_STEP"
KILL_PROCESS_ENV = "PARSETUNE_FAULT_KILL_PROCESS"  # in a pod: only this process index is killed


class KillAfterStep(Callback):
    """Fault injection for resume tests: SIGKILL this process right after step N (0-based) was
    logged and checkpointed, as a preemption would. Enabled only by PARSETUNE_FAULT_KILL_AFTER_STEP."""

    def __init__(self, step: int, checkpointer):
        self.step = step
        self.checkpointer = checkpointer

    def on_step(self, info, force: bool = False) -> None:
        import os
        import signal

        if info.step == self.step:
            import jax

            self.checkpointer.wait_until_finished()
            only = os.environ.get(KILL_PROCESS_ENV)
            if only is not None and int(only) != jax.process_index():
                return
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
