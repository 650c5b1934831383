"""``backdoor-guard demo``: ``defend`` on the embedded default, with a research attack, offline, on a CPU.

1. Load scikit-learn's digits (:func:`~hf_backdoor_guard.data.load_digits_dataset`) and
   poison the victim split with the embedded benchmark's setting for the attack
   (:func:`~hf_backdoor_guard.benchmark.attack_settings.embedded_attack`; target 0).
2. Run the pipeline (:func:`~hf_backdoor_guard.pipeline.run_defend`): a teacher (the
   ``small-resnet``) on the poisoned data, SDEdit variations from the embedded diffusion
   model (which never saw the victim's data), detection, the distilled student, a second
   teacher on the kept rows and the student distilled from it (``student_retaught``, the
   shipped ``model/``), the student on the kept rows, and ``variations_ce`` (plain
   cross-entropy on the variations) as a baseline; C-Acc, ASR and R-Acc of each.
3. Write the report to ``output_dir``: ``metrics.json``, ``report.md``, ``samples.png``,
   ``metrics.png``, ``suspicion.png``, ``gallery.png``, plus ``defend``'s ``model/``,
   ``cleaned/``, ``detection.json`` and the stage cache ``stages/`` (a rerun with the same
   settings reuses it). ``--attack all`` runs every registered attack, one subfolder each,
   with ``summary.json``, ``report.md`` and ``metrics.png`` at the top.

The output folder must be new, empty, or an earlier demo's; only the demo's own outputs
are ever replaced (``--overwrite``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..runtime.outputs import claim_output_dir, locked, record_outputs, write_json_atomic, write_text_atomic
from ..pipeline.models import build_classifier as _build_classifier
from ..pipeline.report import metrics_table

logger = logging.getLogger(__name__)

OWNER = "demo"
REPORT_FILES = ("metrics.json", "report.md", "samples.png", "metrics.png", "suspicion.png", "gallery.png")
SUMMARY_FILES = ("summary.json", "report.md", "metrics.png")
TARGET_LABEL = 0


@dataclass
class DemoSettings:
    """The demo's preset: values for :class:`~hf_backdoor_guard.pipeline.DefendConfig`'s options, by the same
    names, plus the benchmark world. The defaults are the measured best (BENCHMARKS.md)."""

    max_train_samples: int | None = None  # None: the whole victim split (800 rows)
    max_eval_samples: int | None = None  # None: the whole test split (397 rows)
    num_train_epochs: float = 12.0  # the teacher's
    # 9 epochs at half the teacher's learning rate: over 5 student seeds x every attack and seed (145 students,
    # BENCHMARKS.md "student seeds") no student passes ASR 0.10 (6 epochs at 2e-3: SIG 0.115; 9 or 12 at 2e-3:
    # Adaptive-Patch up to 0.35): a student fitted less sharply takes less of the teacher's backdoor along.
    student_epochs: float = 9.0
    student_learning_rate: float = 1e-3
    per_device_train_batch_size: int = 32
    learning_rate: float = 2e-3  # the teacher's
    # 1.0: the student learns from the teacher's soft labels only; the hard labels of poisoned
    # rows (the target class on other classes' images) pull towards the target.
    alpha: float = 1.0
    # 1: at 4 the teacher's small target-class logits on every variation (its backdoor bias) are
    # softened into real probability mass the student learns (Blended seed 4: 0.154 at 4, 0.014 at 1).
    temperature: float = 1.0
    # "mean": each variation is distilled towards the teacher's mean logits over all
    # variations of its source image; "own": towards the teacher's logits on itself.
    teacher_logits: str = "mean"
    variation_options: dict = field(default_factory=dict)  # overrides EMBEDDED_VARIATION_DEFAULTS
    variation_batch_size: int = 64
    width: int = 32  # classifier width (ResNet hidden sizes width, 2*width)
    # the benchmark world (hf_backdoor_guard.benchmark.WORLDS): its data, diffusion model and attack settings;
    # every setting above is the same in every world
    benchmark: str = "digits"
    # earlier runs' output folders whose variations the rows with unchanged images take (the demo runs on the
    # CPU: the same images, made once); a suite (--attack all) passes each attack the folders of those before it
    reuse_variations: list[str] | None = None

    def defend_options(self) -> dict[str, Any]:
        """The preset as ``DefendConfig`` keyword arguments (every field but ``benchmark``)."""
        values = asdict(self)
        values.pop("benchmark")
        return values


def demo_preset(settings: dict) -> DemoSettings:
    """:class:`DemoSettings` with ``settings`` changed; a name that is not one of its fields is refused (an old
    name is told its new one)."""
    from ..arguments import check_option_names

    check_option_names(settings, [f.name for f in fields(DemoSettings)], "demo settings")
    return DemoSettings(**settings)


def attack_names() -> tuple[str, ...]:
    """Every registered attack, in registration order (what ``--attack all`` runs)."""
    from ..attacks import ATTACKS

    return tuple(ATTACKS.names())


def build_classifier(num_labels: int = 10, seed: int = 0, width: int = 32, image_size: int = 16):
    """The demo's classifier for ``image_size`` digits: :func:`hf_backdoor_guard.pipeline.build_classifier`'s
    ``small-resnet``, whose processor upsamples to twice the side (8x8 feature maps learn digits
    much better than 4x4 ones)."""
    return _build_classifier("small-resnet", num_labels, seed=seed, width=width, image_size=2 * image_size)


def demo_config(attack: str, output_dir: Path, seed: int, settings: DemoSettings, push_to_hub: str | None = None,
                overwrite: bool = False):
    """The ``DefendConfig`` of one demo run (every option checked here, before any work); ``compare`` uses it too."""
    from .worlds import world
    from ..pipeline.config import DefendConfig

    return DefendConfig(
        model_name_or_path="small-resnet", **settings.defend_options(),
        diffusion_model=world(settings.benchmark).diffusion_model, attack=attack, target_label=TARGET_LABEL,
        baselines=True, seed=seed, device="cpu", output_dir=str(output_dir), push_to_hub=push_to_hub,
        overwrite=overwrite,
    )


def embedded_inputs(config, attack_name: str, seed: int) -> tuple[dict, Any]:
    """``run_defend``'s data and attack in the benchmark world of ``config``, and the clean pretraining split.

    Returns ``(inputs, pretrain)``: ``inputs`` holds ``train``, ``eval_ds``, ``attack`` (the attack's
    setting in that world at ``seed``), ``poison_kwargs`` and ``data_settings``; ``config.poison_rate``
    is set to the attack's. ``compare`` draws the peer defenses' clean subset from ``pretrain``.
    """
    from .worlds import world_of
    from .attack_settings import embedded_attack

    chosen = world_of(config)  # the world whose diffusion model was pretrained on this data's pretrain split
    data = chosen.load()
    attack, poison_kwargs = embedded_attack(attack_name, seed=seed, clean_data=data["pretrain"], table=chosen.attacks)
    config.poison_rate = poison_kwargs.get("rate", config.poison_rate)
    logger.info("[%s] %s, %r, %s", attack_name, chosen.name, attack, poison_kwargs)
    inputs = dict(train=data["train"], eval_ds=data["test"], attack=attack, poison_kwargs=poison_kwargs,
                  data_settings={"dataset": chosen.description})
    return inputs, data["pretrain"]


def run_embedded(config, attack_name: str, seed: int, *, owner: str, report_title: str):
    """``run_defend`` on the embedded benchmark: digits, the attack's embedded setting, the embedded diffusion model.

    Returns ``(result, attack, pretrain)``: ``run_defend``'s result, the attack it planted, and the clean
    pretraining split (see :func:`embedded_inputs`).
    """
    from ..pipeline.defend import run_defend

    inputs, pretrain = embedded_inputs(config, attack_name, seed)
    result = run_defend(config, **inputs, owner=owner, report_title=report_title)
    return result, inputs["attack"], pretrain


def run_single(attack_name: str, output_dir: Path, seed: int, settings: DemoSettings,
               push_to_hub: str | None = None, overwrite: bool = False) -> dict:
    """One attack end to end; writes the report files into ``output_dir`` and returns the metrics."""
    from ..pipeline.defend import OUTPUT_NAMES, check_output_names

    config = demo_config(attack_name, output_dir, seed, settings, push_to_hub, overwrite)
    check_output_names(output_dir, OUTPUT_NAMES, OWNER)
    result, _, _ = run_embedded(config, attack_name, seed, owner=OWNER,
                                report_title=f"backdoor-guard demo: {attack_name} (seed {seed})")
    if result:
        result["settings"] = asdict(settings)
        write_json_atomic(output_dir / "metrics.json", result)
    return result


def chosen_attacks(attack) -> tuple[list[str], bool]:
    """``(attacks to run, whether they are a suite)``: ``"all"`` or a list of names is a suite (one subfolder
    each, a summary at the top), one name is a single run."""
    names = attack_names()
    if isinstance(attack, str) and attack != "all":
        if attack not in names:
            raise ValueError(f"attack must be one of {list(names) + ['all']}, got {attack!r}.")
        return [attack], False
    chosen = list(names) if attack == "all" else list(attack)
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"attacks must be distinct registered names ({list(names)}), got {chosen!r}.")
    return chosen, True


def _check_args(attack, seed: int, settings: DemoSettings, output_dir: Path, push_to_hub, overwrite) -> list:
    """Every check before any work; returns the attacks to run."""
    from ..validation import check_seed

    chosen, suite = chosen_attacks(attack)
    check_seed("seed", seed)
    if push_to_hub is not None and suite:
        raise ValueError("push_to_hub publishes one student: choose one attack.")
    for name in chosen:  # DefendConfig checks every option
        config = demo_config(name, output_dir / name if suite else output_dir, seed, settings, push_to_hub,
                             overwrite)
    from ..pipeline.config import check_diffusion_model

    check_diffusion_model(config)  # the world's shipped model is here, before its data loads
    from ..pipeline.defend import OUTPUT_NAMES, check_output_names

    if suite:
        check_output_names(output_dir, SUMMARY_FILES + tuple(chosen), OWNER)
        for name in chosen:
            check_output_names(output_dir / name, OUTPUT_NAMES, OWNER)
    else:
        check_output_names(output_dir, OUTPUT_NAMES, OWNER)
    return chosen


def run_demo(
    attack: str = "badnets",
    output_dir: str | os.PathLike = "backdoor-guard-demo",
    seed: int = 0,
    *,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    **settings: Any,
) -> dict:
    """Run the demo for one attack (or ``"all"``) and write the report to ``output_dir``.

    Args:
        attack: a registered attack name, ``all``, or a list of names (one subfolder each, like ``all``).
        output_dir: new, empty, or an earlier demo's folder.
        seed: seeds poisoning, model initialisation, training order and variation noise.
        push_to_hub: a Hub repo id: publish the shipped model (``model/``) there, with a model card
            (one attack only; the staged files are ``output_dir/model``).
        overwrite: start over in an earlier demo's folder with other settings (only the
            demo's own outputs are removed).
        settings: :class:`DemoSettings` fields, named as ``DefendConfig``'s options: ``max_train_samples``,
            ``max_eval_samples`` (stratified subsets, for short runs), ``num_train_epochs`` (the teacher's),
            ``student_epochs``, ``variation_options`` (``ImageVariation.embedded`` options overriding the
            defaults, e.g. ``{"num_inference_steps": 4}``), ``alpha``, ``temperature``, ``benchmark``, ...

    Returns the metrics dict written to ``metrics.json`` (for ``all``: the summary,
    ``{"seed", "seconds", "attacks": {name: metrics}}``).
    """
    demo_settings = demo_preset(settings)
    output_dir = Path(output_dir)
    chosen = _check_args(attack, seed, demo_settings, output_dir, push_to_hub, overwrite)
    if not chosen_attacks(attack)[1]:
        return run_single(attack, output_dir, seed, demo_settings, push_to_hub, overwrite)

    started = time.time()
    claim_output_dir(output_dir, OWNER, "--output-dir")
    with locked(output_dir, "demo"):
        record_outputs(output_dir, chosen)
        results = {}
        for number, name in enumerate(chosen, 1):
            logger.info("=== attack %d/%d: %s ===", number, len(chosen), name)
            settings_now = replace(demo_settings, reuse_variations=[
                *(demo_settings.reuse_variations or []), *(str(output_dir / done) for done in results)])
            results[name] = run_single(name, output_dir / name, seed, settings_now, overwrite=overwrite)
        summary = {"seed": seed, "seconds": round(time.time() - started, 1), "attacks": results}
        write_json_atomic(output_dir / "summary.json", summary)
        from ..pipeline.figures import metrics_chart

        metrics_chart({name: result["models"] for name, result in results.items()}, output_dir / "metrics.png",
                      title=f"backdoor-guard demo, {'every attack' if attack == 'all' else 'attacks'} (seed {seed})")
        write_text_atomic(output_dir / "report.md", _summary_report(summary))
        record_outputs(output_dir, SUMMARY_FILES)
    return summary


def _summary_report(summary: dict) -> str:
    from ..metrics import backdoor_metrics

    metrics = backdoor_metrics()
    lines = [f"# backdoor-guard demo: {len(summary['attacks'])} attacks (seed {summary['seed']})", ""]
    lines += ["| attack | model | " + " | ".join(m.label for m in metrics) + " | flagged / poisoned |",
              "|---|---|" + "---|" * len(metrics) + "---|"]
    for name, result in summary["attacks"].items():
        detection = result["detection"]
        for model, values in result["models"].items():
            lines.append(f"| [{name}]({name}/report.md) | {model} | "
                         + " | ".join(f"{values[m.name]:.3f}" for m in metrics)
                         + f" | {detection['flagged']} / {detection['poisoned']} |")
    lines += ["", f"Total time: {summary['seconds']:.0f} s.", "", "![per attack and model](metrics.png)", ""]
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------
def run_demo_cli(args) -> int:
    """Entry point of ``backdoor-guard demo`` (``args.attack``, ``args.output_dir``, ``args.seed``)."""
    # Errors reach cli.main, which prints one line (exit 2 for bad input, 1 for a failed upload: its files are kept).
    result = run_demo(attack=args.attack, output_dir=args.output_dir, seed=args.seed,
                      push_to_hub=getattr(args, "push_to_hub", None), overwrite=getattr(args, "overwrite", False),
                      benchmark=getattr(args, "benchmark", "digits"),
                      reuse_variations=getattr(args, "reuse_variations", None))
    per_attack = result["attacks"] if args.attack == "all" else {args.attack: result}
    for name, metrics in per_attack.items():
        print(f"\n{name} (seed {metrics['seed']}, {metrics['seconds']:.0f} s)")
        print(metrics_table(metrics["models"], markdown=False))
    print(f"\nReport: {Path(args.output_dir) / 'report.md'}")
    return 0


__all__ = ["DemoSettings", "REPORT_FILES", "attack_names", "build_classifier", "metrics_table", "run_demo",
           "run_demo_cli"]
