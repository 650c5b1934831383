"""The ``backdoor-guard`` command."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backdoor-guard",
        description="Robust training on possibly poisoned image data with diffusion variations + distillation.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="Run the whole method offline on the embedded digits data and diffusion model.",
        description="Poison the embedded digits data, train a teacher, generate variations with the "
        "embedded diffusion model, distil a student and report C-Acc / ASR / R-Acc.",
    )
    demo.add_argument("--attack", default="badnets", choices=["badnets", "blended", "wanet", "sig", "all"])
    demo.add_argument("--output-dir", default="backdoor-guard-demo", help="Where the report is written.")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "demo":
        from .demo import run_demo_cli

        return run_demo_cli(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
