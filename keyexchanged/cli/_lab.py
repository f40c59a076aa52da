"""``keyexchange lab``: the original exercise's attacks, live (docs/lab.rst)."""

from __future__ import annotations

import argparse

from keyexchanged.cli._common import add_command, usage_errors


def add_lab(subparsers) -> None:
    parser = add_command(
        subparsers,
        "lab",
        cmd_lab,
        help="run the original exercise's attacks live, and see KX/1 refuse them",
        description=(
            "Lessons for learners (docs/lab.rst): each starts a deliberately insecure server "
            "and client of the original exercise on 127.0.0.1, attacks them for real, then "
            "runs the same attack against the daemon's own KX/1 server and shows the refusal."
        ),
    )
    parser.add_argument("lessons", nargs="*", metavar="LESSON", help="lessons to run (--list)")
    parser.add_argument("--list", action="store_true", help="list the lessons and exit")
    parser.add_argument("--all", action="store_true", help="run every lesson, in order")
    parser.add_argument(
        "--seed", type=int, metavar="N", help="repeat a run's weak keys and session keys"
    )


def cmd_lab(args: argparse.Namespace) -> int:
    """Run the lab's lessons (keyexchanged.lab)."""
    from keyexchanged import lab, startup

    startup.started()  # lessons run long, and make garbage
    with usage_errors(errors=lab.UnknownLesson):
        return lab.main(args.lessons, list_only=args.list, run_all=args.all, seed=args.seed)
