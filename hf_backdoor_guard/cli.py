"""The ``backdoor-guard`` command."""

from __future__ import annotations

import argparse
import logging
import sys


def add_embedded_run_options(parser: argparse.ArgumentParser, command: str, default_dir: str, dir_help: str) -> None:
    """--benchmark, --attack, --seed, --output-dir and --overwrite: what demo and compare share (both run a
    benchmark world)."""
    from .attacks import ATTACKS  # numpy + PIL only: the registry is cheap to read
    from .benchmark import WORLDS

    parser.add_argument("--benchmark", default="digits", choices=WORLDS.names(),
                        help="The benchmark world: its data, its own diffusion model (pretrained on a split the victim "
                        "never sees) and its attack settings; the method's settings are the same in every world.")
    parser.add_argument("--attack", default="badnets", choices=[*ATTACKS.names(), "all"],
                        help="A registered attack, or 'all' to run every one.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=default_dir, help=dir_help)
    parser.add_argument("--overwrite", action="store_true",
                        help=f"Start over in an earlier {command}'s folder with other settings (removes only its "
                        "outputs).")
    parser.add_argument("--reuse-variations", nargs="+", metavar="DIR", default=None,
                        help="Output folders of earlier demo runs (or compare's method/ folders) in the same world at the "
                        "same seed: the "
                        "rows the attack left unchanged take their variations instead of being varied again (the same "
                        "images, made once; the method's seconds then count only the rows varied again).")


def build_parser(defend_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The command's parser; ``defend_defaults`` (a ``--config`` file's values) replace defend's defaults."""
    from .arguments import argument_parser
    from .attacks import ATTACKS  # numpy + PIL only: the registry is cheap to read
    from .pipeline.config import DefendConfig

    parser = argparse.ArgumentParser(
        prog="backdoor-guard",
        description="Robust training on possibly poisoned image data with diffusion variations + distillation. "
        "Exit codes: 0 done, 2 bad input (refused before any work), 1 a failure during the work, 130 interrupted "
        "(rerun the same command to resume).",
    )
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("-v", "--verbose", action="store_true",
                        help="Also print the libraries' progress bars and logs (datasets, transformers, diffusers).")
    shared.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", parents=[shared],
        help="Run the whole method offline on the embedded digits data and diffusion model.",
        description="Poison the embedded digits data, train a teacher, generate variations with the "
        "embedded diffusion model, distil a student and report C-Acc / ASR / R-Acc.",
    )
    add_embedded_run_options(demo, "demo", "backdoor-guard-demo", "Where the report is written.")
    demo.add_argument("--push-to-hub", metavar="REPO", default=None,
                      help="Publish the shipped model (model/) to this Hub repo with a model card (one attack only).")

    compare = commands.add_parser(
        "compare", parents=[shared],
        help="Measure the method beside every peer defense (ABL, fine-pruning, NAD, ...) on the embedded benchmark.",
        description="On the demo's data and settings, poison the world's training split with the attack's setting "
        "there, run the method (the undefended teacher 'none', 'student', 'student_retaught' = the shipped model/, "
        "'student_cleaned') and every registered peer defense "
        "on the same poisoned data, and write leaderboard.json, leaderboard.md and a C-Acc vs. ASR figure "
        "(DER against 'none') to --output-dir. Every run is cached there, so a rerun resumes.",
    )
    add_embedded_run_options(compare, "compare", "backdoor-guard-compare", "Where the leaderboard is written.")
    compare.add_argument("--defenses", nargs="+", metavar="NAME", default=None,
                         help="Peer defenses to run (names or a comma-separated list; default: every registered "
                         "one and the *_tuned rows). 'none' and the method's rows ('student', 'student_retaught', "
                         "'student_cleaned') always run. "
                         "--list-defenses prints the names and what each assumes.")
    compare.add_argument("--list-defenses", action="store_true", help="Print every defense row and exit.")

    redteam = commands.add_parser(
        "redteam", parents=[shared],
        help="Run the attacks built against this defense (triggers the variations keep) through the demo's defaults.",
        description="Every adaptive attack (lowfreq, border, tint, stroke, surviving) through the demo in a "
        "benchmark world, with a clean reference model (the ASR floor), the diffusion canary (the share of each "
        "trigger the variation model keeps) and a re-tuning check; writes redteam.json, redteam.md and redteam.png "
        "(ASR of model/ per attack beside the undefended teacher) to --output-dir. A rerun resumes.",
    )
    from .benchmark import WORLDS

    redteam.add_argument("--benchmark", default="digits", choices=WORLDS.names(), help="The benchmark world.")
    redteam.add_argument("--seed", type=int, default=0)
    redteam.add_argument("--output-dir", default="backdoor-guard-redteam", help="Where the report is written.")
    redteam.add_argument("--attacks", nargs="+", metavar="NAME", choices=ATTACKS.names(), default=None,
                         help="Attacks to run (default: every attack marked adaptive).")
    redteam.add_argument("--overwrite", action="store_true",
                         help="Start over in an earlier redteam's folder with other settings (removes only its "
                         "outputs).")

    defend = commands.add_parser(
        "defend", parents=[shared, argument_parser((DefendConfig,), add_help=False)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Run the whole method on your dataset: a robust model, a cleaned dataset and the suspicious rows.",
        description="Train a teacher on your (possibly poisoned) data, generate diffusion variations of every "
        "training image, flag the rows whose variations disagree with the teacher, train a second teacher on the "
        "rows kept, and distil a robust student from it. "
        "Writes model/, cleaned/, detection.json and report.md to --output_dir; every stage is cached there, so a "
        "rerun resumes. Runs under `accelerate launch -m hf_backdoor_guard.cli defend ...` with several processes. "
        "The options are DefendConfig's (the data, model and attack options are the recipes' too); each flag is "
        "spelled with underscores or dashes.",
    )
    if defend_defaults:
        defend.set_defaults(**defend_defaults)

    publish = commands.add_parser(
        "publish", parents=[shared],
        help="Publish a trained model folder or a saved (cleaned) dataset to the Hub with a card.",
        description="Stage a save_pretrained model folder or a Dataset.save_to_disk folder with a card from "
        "model_cards/ and upload it to REPO_ID. Log in first (hf auth login, or set HF_TOKEN).",
    )
    publish.add_argument("path", metavar="MODEL_DIR_OR_SAVED_DATASET")
    publish.add_argument("repo_id", metavar="REPO_ID", help="Target repository, user/name.")
    publish.add_argument("--metrics", help="JSON file {attack: {clean_accuracy, attack_success_rate, "
                         "robust_accuracy}} (required for a model).")
    publish.add_argument("--teacher-metrics", help="JSON file with the teacher's metrics, shown for comparison.")
    publish.add_argument("--card-info", help="JSON file with card details (base_dataset, teacher, diffusion_model, "
                         "diffusion_settings, seed, license, ...).")
    publish.add_argument("--info", action="append", default=[], metavar="KEY=VALUE",
                         help="One card detail; VALUE is read as JSON when it parses (seed=42). Repeatable.")
    publish.add_argument("--output-dir", help="Staging folder (default: a new temporary folder).")
    publish.add_argument("--no-push", action="store_true", help="Only stage the files and the card.")
    publish.add_argument("--private", action="store_true", help="Create the repository as private.")
    publish.add_argument("--commit-message", help="Commit message of the upload.")
    publish.add_argument("--image-column-name", default="image", help="Datasets: the column with the variations.")
    publish.add_argument("--label-column-name", default="label", help="Datasets: the label column.")
    publish.add_argument("--keep-source-images", action="store_true",
                         help="Datasets: keep the source (possibly poisoned) image columns.")
    publish.add_argument("--keep-poisoning-columns", action="store_true",
                         help="Datasets: keep ground-truth columns such as poisoned / original_label.")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; for ``defend``, a ``--config`` file's values fill in the options no flag gives."""
    args = build_parser().parse_args(argv)
    if args.command == "defend" and args.config:
        from .arguments import check_option_names, option_names, read_config_file
        from .pipeline.config import DefendConfig

        values = read_config_file(args.config, (DefendConfig,))
        check_option_names(values, option_names((DefendConfig,)), f"config file {args.config}")
        args = build_parser(defend_defaults=values).parse_args(argv)
    return args


def defend_config(args: argparse.Namespace):
    """The ``DefendConfig`` of parsed ``defend`` arguments (checked as it is built)."""
    from .arguments import dataclasses_from_namespace
    from .pipeline.config import DefendConfig

    return dataclasses_from_namespace((DefendConfig,), args)[0]


def _run_defend(args: argparse.Namespace) -> int:
    from .pipeline.defend import defend_main

    config = defend_config(args)
    result = defend_main(config)
    if result:
        from .pipeline.report import metrics_table

        detection = result["detection"]
        print(metrics_table(result["models"], markdown=False))
        print(f"\nFlagged {detection['flagged']} of {detection['rows']} training rows; report: "
              f"{config.output_dir}/report.md")
    return 0


def _run_publish(args: argparse.Namespace) -> int:
    import json

    from .hub.publish import publish_path, read_metrics_file

    card_info: dict = {}
    if args.card_info:
        with open(args.card_info, encoding="utf-8") as handle:
            card_info = json.load(handle)
        if not isinstance(card_info, dict):
            raise ValueError(f"--card-info {args.card_info} must hold a JSON object.")
    for item in args.info:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--info expects KEY=VALUE, got {item!r}.")
        try:
            card_info[key] = json.loads(value)
        except json.JSONDecodeError:
            card_info[key] = value
    options = dict(card_info, output_dir=args.output_dir, push=not args.no_push, private=True if args.private else None)
    if args.commit_message:
        options["commit_message"] = args.commit_message
    staged = publish_path(
        args.path,
        args.repo_id,
        metrics=read_metrics_file(args.metrics) if args.metrics else None,
        teacher_metrics=read_metrics_file(args.teacher_metrics) if args.teacher_metrics else None,
        image_column=args.image_column_name,
        label_column=args.label_column_name,
        keep_source_images=args.keep_source_images,
        keep_poisoning_columns=args.keep_poisoning_columns,
        **options,
    )
    logging.getLogger(__name__).info(
        "Staged in %s%s", staged, "" if args.no_push else f" and uploaded to {args.repo_id}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = parse_args(argv)
    except ValueError as error:  # a --config file that cannot be read or names unknown options
        logging.getLogger(__name__).error("backdoor-guard: %s", error)
        return 2
    if args.verbose:  # our own detail too: which weights load, each model's metrics as they are measured
        logging.getLogger("hf_backdoor_guard").setLevel(logging.DEBUG)
    try:
        from .runtime.console import quiet_libraries

        with quiet_libraries(not args.verbose):
            return _dispatch(args)
    except (ValueError, RuntimeError, OSError, KeyboardInterrupt) as error:
        if args.debug:
            raise
        return _report_error(args.command, error)
    finally:
        _end_process_group()


def _report_error(command: str, error: BaseException) -> int:
    """One line for an expected failure, and its exit code: 2 bad input (every check runs before any work),
    1 a failure during the work (a folder in use, a failed upload, a full disk), 130 interrupted."""
    log = logging.getLogger(__name__)
    if isinstance(error, KeyboardInterrupt):
        log.error("backdoor-guard %s: interrupted; run the same command again to resume where it stopped.", command)
        return 130
    text = str(error) or type(error).__name__
    if isinstance(error, ValueError):
        log.error("backdoor-guard %s: %s", command, text)
        return 2
    log.error("backdoor-guard %s: %s: %s (--debug shows the traceback)", command, type(error).__name__, text)
    return 1


def _end_process_group() -> None:
    """Under torchrun / accelerate launch, leave the process group cleanly: gloo aborts at exit now and then
    ("terminate called without an active exception") when the group is still alive."""
    dist = sys.modules.get("torch.distributed")  # never imported: no group to end, and no torch to load
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .benchmark.demo import run_demo_cli

        return run_demo_cli(args)
    if args.command == "defend":
        return _run_defend(args)
    if args.command == "compare":
        from .benchmark.compare import compare_cli

        return compare_cli(args)
    if args.command == "redteam":
        from .benchmark.redteam import redteam_cli

        return redteam_cli(args)
    if args.command == "publish":
        return _run_publish(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
