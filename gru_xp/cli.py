"""Command line: argparse subcommands. The only place that turns a UserError into one stderr line and exit 2."""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


def _cmd_check(args) -> int:
    from .check import format_rows, run_checks

    rows = run_checks(args.device)
    print(format_rows(rows))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="gru-xp", description="Recurrent networks from scratch on NumPy or CuPy.")
    p.add_argument("--version", action="version", version=f"gru-xp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="prove the install: finite differences, PyTorch parity, CPU vs device")
    c.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    c.set_defaults(func=_cmd_check)
    return p




def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"gru-xp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gru-xp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
