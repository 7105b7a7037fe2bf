"""``otelflow export RUN``: one run from the viewer as OTLP JSON or as JSON lines.

Exit codes: 0 written; 1 the viewer has no such run (or refused the request); 2 the viewer cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from io import StringIO
from typing import IO

from otelflow.cli.client import ViewerRequestError, ViewerUnreachable, get_json, run_path

__all__ = ["main"]


def _write(out: IO[str], args: argparse.Namespace) -> None:
    if args.format == "jsonl":
        detail = get_json(args.viewer, run_path(args.run), args.token)
        for span in detail.get("spans", []):
            out.write(json.dumps(span, ensure_ascii=False, separators=(",", ":")) + "\n")
    else:
        payload = get_json(args.viewer, run_path(args.run, "/export"), args.token)
        out.write(json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n")


def main(args: argparse.Namespace) -> int:
    """Write the run to ``args.output`` or stdout; see the module docstring for exit codes."""
    try:
        if args.output and args.output != "-":
            # fetch first, so an unknown run does not leave an empty file behind
            buffer = StringIO()
            _write(buffer, args)
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(buffer.getvalue())
        else:
            _write(sys.stdout, args)
            sys.stdout.flush()
    except ViewerUnreachable as exc:
        print(f"otelflow export: {exc}", file=sys.stderr)
        return 2
    except ViewerRequestError as exc:
        print(f"otelflow export: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"otelflow export: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
