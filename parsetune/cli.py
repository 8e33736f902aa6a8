"""The ``parsetune`` console script: a thin dispatcher over the prep, pipelines, eval and infra packages.

Each package registers its own subcommand (``register(subparsers)``) and sets ``func``; errors the
user can fix are raised as :class:`UserError` and printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from parsetune import __version__
from parsetune.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from eval.cli import register as register_eval
    from eval.serve.cli import register as register_serve
    from infra.cli import register as register_tpu
    from pipelines.cli import register as register_pipelines
    from prep.cli import register as register_prep

    parser = argparse.ArgumentParser(
        prog="parsetune",
        description="Fine-tune language models to turn text into structure (ViGGO semantic parsing, "
        "text-to-JSON) with Levanter on JAX, and measure how well they do it.",
    )
    parser.add_argument("--version", action="version", version=f"parsetune {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_prep(subparsers)
    register_pipelines(subparsers)
    register_eval(subparsers)
    register_serve(subparsers)
    register_tpu(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"parsetune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"parsetune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
