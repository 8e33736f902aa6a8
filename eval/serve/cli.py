"""``parsetune serve MODEL_OR_RUN_DIR``: load the model, then serve the API on uvicorn until Ctrl-C."""

from __future__ import annotations

import argparse
import sys

from parsetune.errors import UserError

EPILOG = """examples:
  parsetune serve runs/smollm2-lora                      # the run's model, prompt format and constraint
  parsetune serve runs/smollm2-lora/hf --port 8080       # a bare HF checkpoint: completions and chat
  parsetune serve runs/smollm2-lora --host 0.0.0.0 --allowed-host parser.example.com --api-key-file KEYFILE
      # reachable from other hosts by that name (or an IP address), with a key

the API key, when one is set: --api-key KEY or --api-key-file FILE (not both), else the
environment variable PARSETUNE_API_KEY; an empty key is an error. Prefer the file or the
environment: a key on the command line is visible to every user of the machine (ps).

then open http://127.0.0.1:8000/ or:
  curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
    -d '{"model": "smollm2-lora", "prompt": "Sentence: BioShock is a great shooter.\\nMeaning representation:\\n"}'
"""


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from eval.serve.api import ServeSettings, create_app
    from eval.serve.batcher import Batcher
    from eval.serve.access import is_loopback, normalise_allowed_hosts, resolve_api_key
    from eval.serve.read_deadline import read_deadline_protocol
    from eval.serve.served_model import ServedModel

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: expected 1..65535")
    if args.max_batch < 1 or args.max_queue < 1 or args.timeout <= 0 or args.batch_window_ms < 0 or args.read_timeout <= 0:
        raise UserError("--max-batch, --max-queue, --timeout and --read-timeout must be positive, --batch-window-ms >= 0")
    api_key = resolve_api_key(args.api_key, args.api_key_file)
    loopback, allowed_hosts = is_loopback(args.host), normalise_allowed_hosts(args.allowed_host)
    if not loopback and not allowed_hosts:
        print(f"parsetune serve: note: listening on {args.host}: requests must name it by IP address (Host header); add --allowed-host NAME for each host name clients use", file=sys.stderr)  # fmt: skip
    if not loopback and not api_key:
        print(f"parsetune serve: warning: listening on {args.host} without an API key (--api-key-file, PARSETUNE_API_KEY): anyone who reaches it can use it", file=sys.stderr)
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
    settings = ServeSettings(api_key=api_key, timeout_s=args.timeout, bound_to_loopback=loopback, allowed_hosts=allowed_hosts)
    app = create_app(served, batcher, settings)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, http=read_deadline_protocol(args.read_timeout))
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
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/ routes (visible in ps: prefer --api-key-file or PARSETUNE_API_KEY)")  # fmt: skip
    parser.add_argument("--api-key-file", default=None, metavar="FILE", help="read the API key from FILE (surrounding whitespace stripped)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a host name clients reach the server by, besides localhost and IP addresses (repeatable; e.g. behind a reverse proxy); other Host headers get 400")  # fmt: skip
    parser.add_argument("--model-name", default=None, help="the model id clients send [the directory's name]")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most [%(default)s]")
    parser.add_argument("--batch-window-ms", type=float, default=10.0, help="how long the first request waits for others to batch with [%(default)s]")  # fmt: skip
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting at most; more get 429 [%(default)s]")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take before 504 [%(default)s]")
    parser.add_argument("--read-timeout", type=float, default=30.0, help="seconds a client has to send a whole request (headers and body); then the connection is closed [%(default)s]")  # fmt: skip
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 [%(default)s: bf16 on TPU, f32 elsewhere]")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip compiling the decode steps before serving")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level [%(default)s]")
    parser.set_defaults(func=_run)
