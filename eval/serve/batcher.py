"""Dynamic batching: concurrent requests share the same decode steps, on one decode thread.

``Batcher.submit(job)`` queues a ``Job`` (prompt ids, token budget, sampling, constraint, stop
strings) and returns a ``concurrent.futures.Future`` of its ``Completion``. The decode thread takes
the first waiting job, waits up to ``window_s`` for more (or until ``max_batch`` are waiting), and
decodes them together with ``eval.decoding.BatchDecoder``: each row keeps its own budget, sampling
settings, constraint (``eval.constrained.RowConstraints``) and stop strings. Batches are padded to a
power of two rows and caches to a multiple of ``SLOT_ROUND`` slots, so few shapes ever compile.

Past ``max_queue`` waiting jobs, ``submit`` raises ``QueueFull`` (the API answers 429). A job whose
``cancelled`` event is set (its client went away, or timed out) is dropped if it is still waiting,
and its row stops at the next decode step if it is running, so the batch finishes without it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from eval.decoding import BatchDecoder, bucket_length
from eval.generate import prompt_bucket
from eval.sampling import Sampling

SLOT_ROUND = 128  # cache slots are rounded up to a multiple of this (one compiled step per size)


class QueueFull(Exception):
    """More jobs are waiting than the queue holds."""


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    constraint: Any = None  # a GrammarConstraint, or None
    prompt_text: str = ""  # the prompt (a grounded constraint finds its sentence in it)
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    finish_reason: str  # stop (EOS or a stop string) | length
    queued_seconds: float
    decode_seconds: float
    batch_rows: int  # requests decoded together with this one (itself included)


def _rows_for(n: int, max_batch: int) -> int:
    rows = 1
    while rows < n:
        rows *= 2
    return min(rows, max(max_batch, n))


class Batcher:
    def __init__(self, served, max_batch: int = 8, window_s: float = 0.01, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and the window >= 0")
        self.served = served
        self.max_batch, self.window_s, self.max_queue = max_batch, window_s, max_queue
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.running = 0  # rows of the batch being decoded
        self.served_requests = 0
        self.cancelled = 0  # jobs dropped while waiting or stopped while decoding (client gone, timeout)
        self.batches = 0
        self._thread = threading.Thread(target=self._loop, name="parsetune-decode", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> concurrent.futures.Future:
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the queue holds {self.max_queue})")
            self._waiting.append(job)
            self._cv.notify()
        return job.future

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._closed and not self._waiting:
                self._cv.wait()
            if self._closed:
                return None
            deadline = time.perf_counter() + self.window_s
            while len(self._waiting) < self.max_batch and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            jobs: list[Job] = []
            while self._waiting and len(jobs) < self.max_batch:
                job = self._waiting.popleft()
                if job.cancelled.is_set():
                    job.future.cancel()
                    self.cancelled += 1
                elif job.future.set_running_or_notify_cancel():
                    jobs.append(job)
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            self.running = len(jobs)
            try:
                for job, completion in zip(jobs, self.decode(jobs)):
                    job.future.set_result(completion)
            except Exception as err:  # noqa: BLE001 - the requests get the error, the server lives on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
            finally:
                self.running = 0
                self.batches += 1
                self.served_requests += len(jobs)

    def warmup(self, prompt: str, max_tokens: int) -> None:
        """Compile the decode steps of one request alone and of every batch size up to ``max_batch``
        for requests like ``prompt`` with ``max_tokens`` (on this thread, before serving)."""
        ids = self.served.prefix + (self.served.tokenizer(prompt)["input_ids"] or [self.served.pad_id])
        rows = 1
        while True:
            self.decode([Job(list(ids), 2 if rows > 1 else max_tokens) for _ in range(rows)])
            if rows >= self.max_batch:
                break
            rows = min(rows * 2, self.max_batch)

    def decode(self, jobs: list[Job]) -> list[Completion]:
        """Decode ``jobs`` together (on the calling thread); one ``Completion`` each, in order."""
        from eval.constrained import RowConstraints

        served = self.served
        started = time.perf_counter()
        rows = _rows_for(len(jobs), self.max_batch)
        padded = jobs + [jobs[0]] * (rows - len(jobs))  # copies keep one compiled shape; they stop at once
        longest = max(len(j.prompt_ids) for j in jobs)
        bucket = prompt_bucket(longest)
        prompt_slots = bucket_length(longest, bucket)
        budget = max(j.max_tokens for j in jobs)
        slots = -(-(prompt_slots + budget) // SLOT_ROUND) * SLOT_ROUND
        decoder = BatchDecoder(served.model, served.eos_ids, served.pad_id, slots - prompt_slots, slots, bucket)
        constraint = None
        if any(j.constraint is not None for j in jobs):
            constraint = RowConstraints([(j.constraint, j.prompt_text) for j in padded])
        sampling = None
        if any(j.temperature > 0 for j in jobs):
            sampling = Sampling.of([j.temperature for j in padded], [j.top_p for j in padded], [j.seed for j in padded])
        stop_hit = [False] * rows
        gone: set[int] = set()

        def should_stop(row: int, tokens: list[int]) -> bool:
            if row >= len(jobs):
                return True
            if padded[row].cancelled.is_set():
                gone.add(row)
                return True
            if padded[row].stop:
                text = served.tokenizer.decode(tokens, skip_special_tokens=True)
                if any(s in text for s in padded[row].stop):
                    stop_hit[row] = True
                    return True
            return False

        results = decoder.generate(
            [j.prompt_ids for j in padded], constraint, sampling, [j.max_tokens for j in padded], should_stop
        )  # fmt: skip
        seconds = time.perf_counter() - started
        self.cancelled += len(gone)
        out = []
        for row, (job, result) in enumerate(zip(jobs, results)):
            text = served.tokenizer.decode(result.tokens, skip_special_tokens=True)
            if stop_hit[row]:
                text = text[: min(text.find(s) for s in job.stop if s in text)]
            reason = "stop" if result.stopped_at_eos or stop_hit[row] else "length"
            out.append(Completion(text, len(result.tokens), reason, started - job.queued_at, seconds, len(jobs)))
        return out
