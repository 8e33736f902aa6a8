"""`parsetune serve` under load: dynamic batching (--max-batch 16) vs one request at a time
(--max-batch 1), side by side in one run, on the real server.

    PYTHONPATH=. python bench/serve_bench.py --run-dir runs/smollm2-lora --seconds 60 --out /tmp/serve_bench.json

For each mode the bench starts `python -m parsetune serve RUN_DIR --port P --log-level warning
--max-batch N` as a subprocess (with its warm-up on), waits for /health, then primes it: bursts of
1, 2, 4, ... up to N concurrent requests for each prompt-length bucket of the sentences, so that
the decode programs the measurement needs are compiled before it starts (the server's own warm-up
compiles a short prompt with a 4-token budget, not the shapes /v1/parse uses). Then, for 1, 4 and
16 concurrent clients (asyncio + httpx, each client sends its next request when the previous one
answers), it sends POST /v1/parse with the validation sentences in a fixed cyclic order: first
--warmup-seconds of untimed load, then --seconds of measured load. The two servers never run at
the same time.

Measured per cell: requests/s (answers that arrived inside the measured window), client-side
latency p50/p99, output tokens/s, the server's own timing (mean batch_rows, queued and decode
seconds), errors (any non-200 answer or failed connection, warm-up and drain included: there
should be none; they are printed), answers cut by the token budget, and the programs the server
compiled during the cell (counted in its log, with JAX_LOG_COMPILES=1: should be 0, a compilation
would distort the cell). Per server: peak RSS (VmHWM of the server process, read from /proc right
after it became ready and at the end of its run). Prints one table, the speed-up of batching over
one-at-a-time at each concurrency, and how many sentences got the same output from both servers;
--out writes it all as JSON. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = {"batched": None, "single": 1}  # batched: --max-batch from the command line


def read_sentences(path: str, query: str, limit: int | None) -> list[str]:
    """The sentences of a raw ViGGO split (``target``) or of a prepared one (``input``: the
    sentence is what ``{text}`` became in the run's query template)."""
    from parsetune.tasks.viggo_values import sentence_of

    sentences = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                sentences.append(row["target"] if "target" in row else sentence_of(row["input"], query).strip())
    if not sentences:
        raise SystemExit(f"{path}: no sentences")
    return sentences[:limit] if limit else sentences


def prime_groups(run_dir: str, sentences: list[str], prompt) -> dict[int, list[int]]:
    """Sentence indices by the prompt bucket the server pads their prompt to (its prefill shapes)."""
    from transformers import AutoTokenizer

    from eval.generate import prompt_bucket

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(run_dir, "hf"))
    groups: dict[int, list[int]] = {}
    for i, sentence in enumerate(sentences):
        n = len(tokenizer(prompt.render(sentence))["input_ids"])
        bucket = prompt_bucket(n)
        groups.setdefault(max(bucket, -(-n // bucket) * bucket), []).append(i)  # eval.decoding.bucket_length
    return dict(sorted(groups.items()))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 values is the maximum)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def proc_status(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS of a process, in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``parsetune serve`` in a subprocess (its output in a temporary file, shown if it fails)."""

    def __init__(self, run_dir: str, max_batch: int, ready_timeout: float, extra: list[str]) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")
        command = [sys.executable, "-m", "parsetune", "serve", run_dir, "--port", str(self.port), "--log-level", "warning",
                   "--max-batch", str(max_batch), *extra]
        started = time.perf_counter()
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # this checkout's code
        env = {**os.environ, "PYTHONPATH": path, "JAX_LOG_COMPILES": "1"}  # logs each program it compiles (or loads)
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env)
        while True:
            self.check_alive()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > ready_timeout:
                self.stop()
                raise SystemExit(f"parsetune serve did not answer /health within {ready_timeout:.0f} s")
            time.sleep(0.5)
        self.ready_seconds = time.perf_counter() - started

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise SystemExit(f"parsetune serve exited with {self.proc.returncode}:\n{self.log.read()[-3000:]}")

    def compilations(self) -> int:
        """Programs the server has compiled (or loaded from the persistent cache) so far."""
        self.log.seek(0)
        return self.log.read().count("Compiling jit(")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def post_parse(client, url: str, text: str, max_tokens: int | None) -> dict:
    """One /v1/parse request: status, client-side seconds, the answer's fields (or the error)."""
    import httpx

    body = {"text": text} if max_tokens is None else {"text": text, "max_tokens": max_tokens}
    start = time.perf_counter()
    try:
        response = await client.post(url + "/v1/parse", json=body)
        status, answer = response.status_code, response.json() if response.content else {}
    except (httpx.HTTPError, ValueError) as err:
        status, answer = None, {"error": f"{type(err).__name__}: {err}"}
    end = time.perf_counter()
    return {"status": status, "start": start, "end": end, "answer": answer}


async def prime(url: str, sentences: list[str], groups: dict[int, list[int]], max_batch: int, max_tokens: int | None) -> dict:
    """Bursts of r concurrent requests (r = 1, 2, 4, ... max_batch) per prompt bucket: compiles the
    prefill of every (rows, bucket) and the decode step of every row count the load will use."""
    import httpx

    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    errors, got_rows, bursts = [], set(), 0
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=max_batch + 4)) as client:
        for rows in sizes:
            for indices in groups.values():
                texts = [sentences[indices[i % len(indices)]] for i in range(rows)]
                for _ in range(3):  # a burst may be split over two batches: then again
                    bursts += 1
                    answers = await asyncio.gather(*(post_parse(client, url, t, max_tokens) for t in texts))
                    errors += [r for r in answers if r["status"] != 200]
                    seen = [r["answer"]["timing"]["batch_rows"] for r in answers if r["status"] == 200]
                    got_rows.update(seen)
                    if seen and 2 * max(seen) > rows:  # padded to `rows` rows: the shape we wanted
                        break
    return {"seconds": time.perf_counter() - start, "bursts": bursts, "batch_rows_seen": sorted(got_rows), "errors": errors}


async def load(url: str, sentences: list[str], clients: int, warmup_s: float, seconds: float,
               max_tokens: int | None) -> tuple[list[dict], float, float]:
    """``clients`` closed-loop clients for warmup_s + seconds; sentences are handed out in a fixed
    cyclic order. Returns every request (requests in flight at the end are awaited) and the measured
    window (begin, end)."""
    import httpx

    counter = 0
    records: list[dict] = []
    t0 = time.perf_counter()
    begin, end = t0 + warmup_s, t0 + warmup_s + seconds

    async def client_loop(client) -> None:
        nonlocal counter
        while time.perf_counter() < end:
            index = counter % len(sentences)
            counter += 1
            r = await post_parse(client, url, sentences[index], max_tokens)
            r["index"] = index
            records.append(r)

    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=clients + 4)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return records, begin, end


def summarize(records: list[dict], begin: float, end: float) -> dict:
    measured = [r for r in records if r["status"] == 200 and begin <= r["end"] <= end]
    errors = [r for r in records if r["status"] != 200]
    timing = [r["answer"]["timing"] for r in measured]
    latency = [r["end"] - r["start"] for r in measured]
    seconds = end - begin
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "requests": len(measured),
        "requests_per_s": len(measured) / seconds,
        "p50_s": percentile(latency, 50),
        "p99_s": percentile(latency, 99),
        "mean_latency_s": mean(latency),
        "output_tokens_per_s": sum(r["answer"]["usage"]["completion_tokens"] for r in measured) / seconds,
        "mean_completion_tokens": mean([r["answer"]["usage"]["completion_tokens"] for r in measured]),
        "mean_batch_rows": mean([t["batch_rows"] for t in timing]),
        "mean_queued_s": mean([t["queued_seconds"] for t in timing]),
        "mean_decode_s": mean([t["decode_seconds"] for t in timing]),
        "cut_by_token_budget": sum(r["answer"]["finish_reason"] == "length" for r in measured),
        "sent_in_all": len(records),
        "errors": len(errors),
        "error_samples": [{"status": r["status"], "answer": r["answer"]} for r in errors[:5]],
    }


def run_mode(mode: str, max_batch: int, args, sentences, groups) -> dict:
    print(f"\n[{mode}] starting parsetune serve {args.run_dir} --max-batch {max_batch} ...", flush=True)
    server = Server(args.run_dir, max_batch, args.ready_timeout, args.server_args)
    try:
        ready = proc_status(server.proc.pid)
        print(f"[{mode}] ready after {server.ready_seconds:.1f} s (load + warm-up), peak RSS so far {ready['VmHWM']:.0f} MB", flush=True)
        primed = {"seconds": 0.0, "bursts": 0, "batch_rows_seen": [], "errors": []}
        if not args.no_prime:
            before = server.compilations()
            primed = asyncio.run(prime(server.url, sentences, groups, max_batch, args.max_tokens))
            primed["compilations"] = server.compilations() - before
            print(f"[{mode}] primed in {primed['seconds']:.1f} s ({primed['bursts']} bursts, batch rows seen "
                  f"{primed['batch_rows_seen']}, {primed['compilations']} programs compiled, {len(primed['errors'])} errors)",
                  flush=True)
        cells = {}
        outputs: dict[int, str] = {}
        for clients in args.clients:
            server.check_alive()
            before = server.compilations()
            load_avg = os.getloadavg()[0]
            records, begin, end = asyncio.run(load(server.url, sentences, clients, args.warmup_seconds, args.seconds, args.max_tokens))
            cell = summarize(records, begin, end)
            cell["compilations"] = server.compilations() - before
            cell["load_avg_1min_before"] = round(load_avg, 2)
            cells[clients] = cell
            for r in records:
                if r["status"] == 200:
                    outputs.setdefault(r["index"], r["answer"]["output"])
            print(f"[{mode}] {clients:2d} clients: {cell['requests_per_s']:.2f} req/s, p50 {cell['p50_s']:.2f} s, "
                  f"p99 {cell['p99_s']:.2f} s, batch rows {cell['mean_batch_rows']:.2f}, errors {cell['errors']}, "
                  f"programs compiled {cell['compilations']}", flush=True)
            for sample in cell["error_samples"]:
                print(f"[{mode}]   error: {json.dumps(sample)[:500]}", flush=True)
        server.check_alive()
        peak = proc_status(server.proc.pid)
    finally:
        server.stop()
    return {"max_batch": max_batch, "ready_seconds": server.ready_seconds, "peak_rss_mb_when_ready": ready["VmHWM"],
            "peak_rss_mb": peak["VmHWM"], "rss_mb_at_end": peak["VmRSS"], "prime": {**primed, "errors": len(primed["errors"])},
            "cells": cells, "outputs": outputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/smollm2-lora", help="run dir to serve (`parsetune run`'s output) [%(default)s]")
    ap.add_argument("--data", default=None,
                    help="sentences: a prepared split (input) or a raw ViGGO split (target) [RUN_DIR/prep/validation.jsonl]")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N sentences [all]")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured load per cell (mode x clients) [%(default)s]")
    ap.add_argument("--warmup-seconds", type=float, default=10.0, help="untimed load before each cell's measurement [%(default)s]")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated numbers of concurrent clients [%(default)s]")
    ap.add_argument("--modes", default="batched,single",
                    help="comma-separated: batched (--max-batch MAX_BATCH), single (--max-batch 1) [%(default)s]")
    ap.add_argument("--max-batch", type=int, default=16, help="the batched server's --max-batch [%(default)s]")
    ap.add_argument("--max-tokens", type=int, default=None, help="max_tokens of each /v1/parse request [the server's default]")
    ap.add_argument("--no-prime", action="store_true", help="skip the bursts that compile every batch shape before measuring")
    ap.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for the server's /health [%(default)s]")
    ap.add_argument("--server-args", nargs=argparse.REMAINDER, default=[], help="extra `parsetune serve` options (last on the line)")
    ap.add_argument("--out", help="also write the results here (JSON)")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.run_dir = os.path.abspath(args.run_dir)

    from eval.serve.served_model import read_run_task

    task = read_run_task(args.run_dir)
    if task.prompt is None:
        raise SystemExit(f"{args.run_dir}: no prompt format (prep/validation.jsonl + manifest.json): /v1/parse cannot work")
    sentences = read_sentences(args.data or os.path.join(args.run_dir, "prep", "validation.jsonl"), task.prompt.query, args.limit)
    groups = prime_groups(args.run_dir, sentences, task.prompt)
    print(f"{len(sentences)} sentences, prompt buckets {list(groups)} tokens; {os.cpu_count()} CPUs; "
          f"{args.warmup_seconds:g} s warm-up + {args.seconds:g} s measured per cell", flush=True)

    results = {}
    for mode in args.modes.split(","):
        max_batch = MODES[mode] or args.max_batch
        results[mode] = run_mode(mode, max_batch, args, sentences, groups)

    print(f"\n/v1/parse, {len(sentences)} validation sentences cycled, {args.seconds:g} s per cell after {args.warmup_seconds:g} s "
          f"of load; latency = client-side seconds per request")
    header = "| server | clients | answers | req/s | p50 s | p99 s | out tok/s | batch rows | queued s | decode s | errors | compiled |"
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for mode, result in results.items():
        label = f"{mode} (--max-batch {result['max_batch']})"
        for clients, c in result["cells"].items():
            print(f"| {label} | {clients} | {c['requests']} | {c['requests_per_s']:.2f} | {c['p50_s']:.2f} | {c['p99_s']:.2f} | "
                  f"{c['output_tokens_per_s']:.1f} | {c['mean_batch_rows']:.2f} | {c['mean_queued_s']:.2f} | "
                  f"{c['mean_decode_s']:.2f} | {c['errors']} | {c['compilations']} |")
    for mode, result in results.items():
        print(f"{mode}: peak RSS {result['peak_rss_mb']:.0f} MB (when ready: {result['peak_rss_mb_when_ready']:.0f} MB), "
              f"ready after {result['ready_seconds']:.0f} s, primed in {result['prime']['seconds']:.0f} s")
    if "batched" in results and "single" in results:
        batched, single = results["batched"], results["single"]
        print("\nbatched / single at the same concurrency (req/s ratio; p50 latency single / batched):")
        results["speedup"] = {}
        for clients in args.clients:
            b, s = batched["cells"][clients], single["cells"][clients]
            results["speedup"][clients] = {"requests_per_s": ratio(b["requests_per_s"], s["requests_per_s"]),
                                           "p50": ratio(s["p50_s"], b["p50_s"])}
            print(f"  {clients:2d} clients: {ratio(b['requests_per_s'], s['requests_per_s']):.2f}x req/s, "
                  f"p50 {s['p50_s']:.2f} s -> {b['p50_s']:.2f} s ({ratio(s['p50_s'], b['p50_s']):.2f}x)")
        common = set(batched["outputs"]) & set(single["outputs"])
        same = sum(batched["outputs"][i] == single["outputs"][i] for i in common)
        print(f"same output from both servers: {same}/{len(common)} sentences")
        results["same_outputs"] = {"same": same, "compared": len(common)}
    cells = [c for r in results.values() if "cells" in r for c in r["cells"].values()]
    errors = sum(c["errors"] for c in cells)
    if any(c["requests"] < 20 for c in cells):
        print("warning: some cells measured fewer than 20 answers: their p99 is their maximum; use a longer --seconds")
    print(f"errors (non-200 or failed requests, all cells): {errors}; answers cut by the token budget: "
          f"{sum(c['cut_by_token_budget'] for c in cells)}")
    if args.out:
        for result in results.values():
            result.pop("outputs", None)
        Path(args.out).write_text(json.dumps({"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                                              "sentences": len(sentences), "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
