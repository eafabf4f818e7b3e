"""`python -m minidiff COMMAND`: info, exercises (and demo, train, sample, bench as they arrive)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _info(_: argparse.Namespace) -> int:
    from minidiff.info import report

    print(report())
    return 0


def _exercises(args: argparse.Namespace) -> int:
    from minidiff import exercise_tools

    if args.check:
        stale = exercise_tools.stale_files()
        if stale:
            print("stale exercise stubs (run `python -m minidiff exercises`): " + ", ".join(stale))
            return 1
        print("exercise stubs are up to date")
        return 0
    for name in exercise_tools.write_stubs():
        print(f"wrote minidiff/exercises/{name}")
    return 0


def _not_yet(command: str, issue: str) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"`python -m minidiff {command}` is not available yet: it arrives with {issue}.", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minidiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, backends and how the C++ extension was built").set_defaults(run=_info)
    ex = sub.add_parser("exercises", help="regenerate the student stubs in minidiff/exercises/")
    ex.add_argument("--check", action="store_true", help="only report stubs that are out of date")
    ex.set_defaults(run=_exercises)
    sub.add_parser("demo", help="train a small model and write samples (not yet)").set_defaults(
        run=_not_yet("demo", "the training issue")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
