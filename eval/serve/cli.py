"""``parsetune serve MODEL_OR_RUN_DIR``: load the model, then serve the API on uvicorn until Ctrl-C."""

from __future__ import annotations

import argparse
import sys

from parsetune.errors import UserError

EPILOG = """examples:
  parsetune serve runs/smollm2-lora                      # the run's model, prompt format and constraint
  parsetune serve runs/smollm2-lora/hf --port 8080       # a bare HF checkpoint: completions and chat
  parsetune serve runs/smollm2-lora --host 0.0.0.0 --api-key "$KEY"   # reachable from other hosts: set a key

then open http://127.0.0.1:8000/ or:
  curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
    -d '{"model": "smollm2-lora", "prompt": "Sentence: BioShock is a great shooter.\\nMeaning representation:\\n"}'
"""


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from eval.serve.api import ServeSettings, create_app
    from eval.serve.batcher import Batcher
    from eval.serve.served_model import ServedModel

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: expected 1..65535")
    if args.max_batch < 1 or args.max_queue < 1 or args.timeout <= 0 or args.batch_window_ms < 0:
        raise UserError("--max-batch, --max-queue and --timeout must be positive, --batch-window-ms >= 0")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"parsetune serve: warning: listening on {args.host} without --api-key: anyone who reaches it can use it", file=sys.stderr)
    print(f"parsetune serve: loading {args.target}", file=sys.stderr)
    served = ServedModel(args.target, args.dtype, args.model_name)
    batcher = Batcher(served, args.max_batch, args.batch_window_ms / 1000, args.max_queue)
    print(
        f"parsetune serve: model {served.name!r}, constraint by default: {served.task_constraint_description}; "
        f"batches of up to {args.max_batch}, queue {args.max_queue}",
        file=sys.stderr,
    )
    if args.warmup:
        print("parsetune serve: compiling the decode steps (--no-warmup skips this)", file=sys.stderr)
        fmt, budget = served.prompt_format, served.task.max_new_tokens if served.task else 96
        batcher.warmup(fmt.render("A warm-up sentence.") if fmt else "Hello", budget)
    app = create_app(served, batcher, ServeSettings(api_key=args.api_key, timeout_s=args.timeout))
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        batcher.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model or run dir behind an OpenAI-compatible API (and a page to try it)",
        description="Serve a fine-tuned model over HTTP: /v1/models, /v1/completions, /v1/chat/completions "
        "(OpenAI-compatible; response_format json_object / json_schema and our 'grammar' field constrain "
        "the output so it always parses), /v1/parse and a page at / to try it, /health. Concurrent requests "
        "share decode steps (dynamic batching); past --max-queue waiting requests the server answers 429.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="MODEL_OR_RUN_DIR", help="a run dir of `parsetune run` (serves its task's prompt format and constraint) or an HF model dir (local or gs://)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to bind [%(default)s: this machine only]")
    parser.add_argument("--port", type=int, default=8000, help="[%(default)s]")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/ routes")
    parser.add_argument("--model-name", default=None, help="the model id clients send [the directory's name]")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most [%(default)s]")
    parser.add_argument("--batch-window-ms", type=float, default=10.0, help="how long the first request waits for others to batch with [%(default)s]")  # fmt: skip
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting at most; more get 429 [%(default)s]")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take before 504 [%(default)s]")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 [%(default)s: bf16 on TPU, f32 elsewhere]")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip compiling the decode steps before serving")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level [%(default)s]")
    parser.set_defaults(func=_run)
