"""``backdoor-guard demo``: the whole method, offline, on a CPU, in a few minutes.

1. Load scikit-learn's digits (:func:`~hf_backdoor_guard.data.load_digits_dataset`) and
   poison the victim split (10% of the non-target rows, target 0; SIG is clean-label).
2. Train a teacher (a small transformers ResNet built in code) on the poisoned data.
3. Replace every training image by SDEdit variations from the embedded diffusion model
   (:meth:`ImageVariation.embedded`), which never saw the victim's data.
4. Distil a student from the teacher on the variations (:class:`DistillationTrainer`),
   and, as a baseline, train ``variations_ce`` on the variations with plain cross-entropy.
5. Evaluate the three models (C-Acc, ASR, R-Acc) and write a report to ``output_dir``:
   ``metrics.json``, ``report.md``, ``samples.png`` (clean / poisoned / variation) and
   ``metrics.png`` (bar chart). ``--attack all`` writes one subfolder per attack plus a
   ``summary.json`` and ``report.md`` at the top.

The output folder must be new, empty, or an earlier demo's folder (it holds a
``.backdoor-guard-demo`` marker); the demo only ever writes its own file names there.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

MODEL_NAMES = ("teacher", "student", "student_cleaned", "variations_ce")
METRIC_NAMES = ("clean_accuracy", "attack_success_rate", "robust_accuracy")
MARKER = ".backdoor-guard-demo"
REPORT_FILES = ("metrics.json", "report.md", "samples.png", "metrics.png", "suspicion.png")
SUMMARY_FILES = ("summary.json", "report.md", "metrics.png")
TARGET_LABEL = 0
DETECTION_SCORE = "combined"  # see BENCHMARKS.md, "detection"
POISON_RATE = 0.1


@dataclass
class DemoSettings:
    """Knobs of one demo run; the defaults are the measured best (BENCHMARKS.md)."""

    train_rows: int | None = None  # None: the whole victim split (800 rows)
    test_rows: int | None = None  # None: the whole test split (397 rows)
    teacher_epochs: float = 12.0
    student_epochs: float = 12.0
    batch_size: int = 32
    learning_rate: float = 2e-3
    # 1.0: the student learns from the teacher's soft labels only; the hard labels of poisoned
    # rows (the target class on other classes' images) pull towards the target.
    alpha: float = 1.0
    temperature: float = 4.0
    # "mean": each variation is distilled towards the teacher's mean logits over all
    # variations of its source image; "own": towards the teacher's logits on itself.
    teacher_logits: str = "mean"
    variation_options: dict = field(default_factory=dict)  # overrides EMBEDDED_VARIATION_DEFAULTS
    variation_batch_size: int = 64
    width: int = 32  # classifier width (ResNet hidden sizes width, 2*width)


def attack_names() -> tuple[str, ...]:
    """Every registered attack, in registration order (what ``--attack all`` runs)."""
    from .attacks import ATTACKS

    return tuple(ATTACKS.names())


# --- the classifier ----------------------------------------------------------------------
def build_classifier(num_labels: int = 10, seed: int = 0, width: int = 32, image_size: int = 16):
    """A small randomly initialised transformers ResNet for 16x16 digits, and its processor.

    The processor upsamples to 32 px: the ResNet stem divides the side by 4, and 8x8
    feature maps learn digits much better than 4x4 ones.
    """
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=3,
        embedding_size=width // 2,
        hidden_sizes=[width, 2 * width],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
        id2label={i: str(i) for i in range(num_labels)},
        label2id={str(i): i for i in range(num_labels)},
    )
    torch.manual_seed(seed)
    model = ResNetForImageClassification(config)
    processor = ConvNextImageProcessorPil(
        size={"shortest_edge": 2 * image_size}, crop_pct=1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model, processor


# --- output folder safety ----------------------------------------------------------------
def _prepare_output_dir(output_dir: Path, names: tuple[str, ...]) -> None:
    """Refuse a folder that holds someone else's files; never touch files the demo did not write."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} exists and is not a folder.")
    if output_dir.is_dir():
        entries = [entry.name for entry in output_dir.iterdir()]
        if entries and MARKER not in entries:
            raise ValueError(
                f"output_dir {output_dir} is not empty and was not written by the demo ({len(entries)} entries, "
                f"e.g. {sorted(entries)[:3]}); choose a new or empty folder so none of your files is overwritten."
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = output_dir / name
        if path.exists() and not path.is_file():
            raise ValueError(f"{path} exists and is not a file; the demo will not replace it.")
    (output_dir / MARKER).write_text("Written by `backdoor-guard demo`; it may rewrite its report files here.\n")


def _check_args(attack: str, seed: int, settings: DemoSettings) -> None:
    if attack not in attack_names() + ("all",):
        raise ValueError(f"attack must be one of {list(attack_names()) + ['all']}, got {attack!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}.")
    for name in ("train_rows", "test_rows"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 20):
            raise ValueError(f"{name} must be None (all rows) or an int >= 20, got {value!r}.")
    for name in ("teacher_epochs", "student_epochs", "learning_rate", "temperature"):
        value = getattr(settings, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}.")
    if not 0 <= settings.alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {settings.alpha!r}.")
    if settings.teacher_logits not in ("mean", "own"):
        raise ValueError(f"teacher_logits must be 'mean' or 'own', got {settings.teacher_logits!r}.")
    if not isinstance(settings.variation_options, dict):
        raise ValueError("variation_options must be a dict of ImageVariation options.")


# --- steps -------------------------------------------------------------------------------
def _subset(ds, rows: int | None, seed: int):
    """A class-stratified subset of ``rows`` rows (all rows when ``rows`` is None)."""
    if rows is None or rows >= len(ds):
        return ds
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(ds)), train_size=rows, random_state=seed, stratify=ds["label"])
    return ds.select(np.sort(keep))


def _training_args(output_dir: str, seed: int, epochs: float, settings: DemoSettings, distill: bool = False):
    from transformers import TrainingArguments

    from .distillation import DistillationTrainingArguments

    common = dict(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to="none",
        logging_strategy="epoch",
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    if distill:
        return DistillationTrainingArguments(
            alpha=settings.alpha, temperature=settings.temperature, augment=False, **common
        )
    return TrainingArguments(**common)


def _mean_logits_per_source(ds, column: str = "teacher_logits"):
    """Replace each row's teacher logits by the mean over all variations of the same source image."""
    logits = np.asarray(ds[column], dtype=np.float32)
    sources = np.asarray(ds["source_index"])
    _, inverse = np.unique(sources, return_inverse=True)
    sums = np.zeros((inverse.max() + 1, logits.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, logits)
    counts = np.bincount(inverse)[:, None]
    mean = (sums / counts).astype(np.float32)[inverse]
    features = ds.features
    return ds.remove_columns(column).add_column(column, list(mean), feature=features[column])


def _detect(teacher, poisoned, varied, variation_logits, processor, score: str = DETECTION_SCORE):
    """Flag suspicious victim rows (no ground truth used) and measure the flags against it.

    Returns the dataset with ``suspicion``/``flagged`` columns and the detection metrics,
    including the AUROC of every score. ``variation_logits``, the teacher's logits on the
    variations, were computed for distillation, so only the originals take one more pass.
    """
    from .detection import SCORES, detect_poisoned, otsu_threshold, suspicion_scores
    from .evaluation import predict_logits
    from .metrics import auroc, detection_metrics

    original = predict_logits(teacher, poisoned, processor, batch_size=128, progress=False)
    detected = detect_poisoned(teacher, poisoned, varied, score=score, logits=(original, variation_logits))
    truth = np.asarray(poisoned["poisoned"])
    result = detection_metrics(detected["suspicion"], truth, flagged=detected["flagged"])
    by_score = {}
    for name in SCORES:
        values, _ = suspicion_scores(original, variation_logits, varied["source_index"], poisoned["label"], name)
        by_score[name] = round(auroc(values, truth), 4)
    return detected, {
        "score": score,
        **{key: round(float(value), 4) for key, value in result.items()},
        "threshold": round(otsu_threshold(np.asarray(detected["suspicion"])), 4),
        "flagged": int(np.sum(detected["flagged"])),
        "poisoned": int(truth.sum()),
        "auroc_by_score": by_score,
    }


def run_single(attack_name: str, output_dir: Path, seed: int, settings: DemoSettings,
               push_to_hub: str | None = None) -> dict:
    """One attack end to end; writes the report files into ``output_dir`` and returns the metrics."""
    import torch

    from . import attacks, evaluation, poisoning
    from .data import load_digits_dataset
    from .detection import clean_dataset
    from .distillation import DistillationTrainer, precompute_teacher_logits
    from .embedded import EMBEDDED_VARIATION_DEFAULTS
    from .training import train_classifier
    from .variations import ImageVariation

    started = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.time() - since, 1)
        return time.time()

    attack = attacks.attack_from_name(attack_name)
    logger.info("[%s] 1/5 data: digits, poisoning 10%% of the eligible rows (target %d)", attack_name, TARGET_LABEL)
    # The split seed stays 0: the embedded diffusion model was pretrained on that split's
    # "pretrain" rows, and only those; the run's seed varies everything else.
    data = load_digits_dataset(seed=0)
    train = _subset(data["train"], settings.train_rows, seed)
    test = _subset(data["test"], settings.test_rows, seed)
    poisoned = poisoning.poison_dataset(train, attack, target_label=TARGET_LABEL, rate=POISON_RATE, seed=seed)
    triggered = poisoning.triggered_testset(test, attack, target_label=TARGET_LABEL)
    num_labels = data["train"].features["label"].num_classes
    t = lap("data", started)

    with tempfile.TemporaryDirectory(prefix="hbg-demo-") as scratch:
        logger.info("[%s] 2/5 teacher on the poisoned data (%d rows)", attack_name, len(poisoned))
        teacher, processor = build_classifier(num_labels, seed=seed, width=settings.width)
        train_classifier(
            teacher, poisoned, _training_args(f"{scratch}/teacher", seed, settings.teacher_epochs, settings),
            image_processor=processor, augment=False,
        )
        t = lap("teacher", t)

        options = {**EMBEDDED_VARIATION_DEFAULTS, **settings.variation_options, "seed": seed}
        variation = ImageVariation.embedded(**options)
        logger.info("[%s] 3/5 variations: %d per image, %r", attack_name, variation.num_variations, variation)
        varied = poisoned.map(
            variation, batched=True, with_indices=True,
            batch_size=max(1, settings.variation_batch_size // variation.num_variations),
            features=variation.output_features(poisoned.features), desc="Variations",
        )
        t = lap("variations", t)

        logger.info("[%s] 4/5 student distilled from the teacher on %d variations", attack_name, len(varied))
        cached = precompute_teacher_logits(teacher, varied, processor, batch_size=128)
        variation_logits = np.asarray(cached["teacher_logits"], dtype=np.float64)  # per variation, for detection
        if settings.teacher_logits == "mean":
            cached = _mean_logits_per_source(cached)
        epochs = settings.student_epochs / variation.num_variations  # same number of steps per source image

        def distil(name: str, train_dataset):
            """A fresh student distilled from the cached teacher logits of ``train_dataset``."""
            model, _ = build_classifier(num_labels, seed=seed + 1, width=settings.width)
            trainer = DistillationTrainer(
                model=model, teacher_model=None,
                args=_training_args(f"{scratch}/{name}", seed, epochs, settings, distill=True),
                train_dataset=train_dataset, processing_class=processor,
            )
            trainer.train()
            return trainer.model

        student = distil("student", cached)
        t = lap("student", t)

        logger.info("[%s] 4/5 detection: teacher on originals vs. variations, then a student on the cleaned data",
                    attack_name)
        detected, detection = _detect(teacher, poisoned, varied, variation_logits, processor)
        student_cleaned = distil("student_cleaned", clean_dataset(cached, "drop", source=detected))
        t = lap("detection_and_student_cleaned", t)

        logger.info("[%s] 4/5 baseline: plain cross-entropy on the variations", attack_name)
        baseline, _ = build_classifier(num_labels, seed=seed + 1, width=settings.width)
        train_classifier(
            baseline, varied, _training_args(f"{scratch}/variations_ce", seed, epochs, settings),
            image_processor=processor, augment=False,
        )
        t = lap("variations_ce", t)

    logger.info("[%s] 5/5 evaluation on %d clean and %d triggered test images", attack_name, len(test), len(triggered))
    models = {}
    for name, model in (("teacher", teacher), ("student", student), ("student_cleaned", student_cleaned),
                        ("variations_ce", baseline)):
        result = evaluation.evaluate_backdoor(
            model, test, attack, TARGET_LABEL, image_processor=processor, batch_size=128,
            triggered_ds=triggered, progress=False,
        )
        models[name] = {key: round(float(result[key]), 4) for key in METRIC_NAMES}
    lap("evaluation", t)

    metrics = {
        "attack": attack_name,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
        "models": models,
        "detection": detection,
        "timings": timings,
        "attack_config": attack.config(),
        "variation": {k: v for k, v in variation.settings().items() if k not in ("scheduler", "algorithm")},
        "settings": asdict(settings),
        "rows": {"train": len(poisoned), "poisoned": int(np.sum(poisoned["poisoned"])), "test": len(test),
                 "triggered_test": len(triggered), "torch_threads": torch.get_num_threads()},
    }
    _write_json(output_dir / "metrics.json", metrics)
    _samples_figure(train, poisoned, varied, variation.num_variations).save(output_dir / "samples.png")
    _bar_chart({attack_name: models}).save(output_dir / "metrics.png")
    _histogram(detected["suspicion"], poisoned["poisoned"], threshold=detection["threshold"]).save(
        output_dir / "suspicion.png")
    (output_dir / "report.md").write_text(_single_report(metrics))
    if push_to_hub:  # after the report, so a failed upload leaves a complete run behind
        metrics["hub"] = _publish_student(student, processor, push_to_hub, output_dir, metrics)
        _write_json(output_dir / "metrics.json", metrics)
    logger.info("[%s] done in %.0f s: %s", attack_name, metrics["seconds"], output_dir)
    return metrics


def _publish_student(student, processor, repo_id: str, output_dir: Path, metrics: dict) -> dict:
    """Stage the distilled student with its card in ``output_dir/hub`` and upload it."""
    from .hub import publish_model

    attack, settings = metrics["attack"], metrics["settings"]
    staged = publish_model(
        student, repo_id, {attack: metrics["models"]["student"]}, image_processor=processor,
        output_dir=output_dir / "hub", teacher_metrics={attack: metrics["models"]["teacher"]},
        base_dataset="scikit-learn digits, 16x16 (backdoor-guard demo victim split)",
        teacher="small ResNet trained on the poisoned victim split",
        diffusion_model="hf_backdoor_guard embedded digits DDPM (SDEdit)",
        diffusion_settings=metrics["variation"],
        distillation_settings={key: settings[key] for key in ("alpha", "temperature", "teacher_logits")},
        seed=metrics["seed"], license="apache-2.0", target_label=TARGET_LABEL, poison_rate=POISON_RATE,
    )
    return {"repo_id": repo_id, "staged": str(staged)}


def run_demo(
    attack: str = "badnets",
    output_dir: str | os.PathLike = "backdoor-guard-demo",
    seed: int = 0,
    *,
    train_rows: int | None = None,
    test_rows: int | None = None,
    teacher_epochs: float | None = None,
    student_epochs: float | None = None,
    variation_options: dict | None = None,
    push_to_hub: str | None = None,
    **settings: Any,
) -> dict:
    """Run the demo for one attack (or ``"all"``) and write the report to ``output_dir``.

    Args:
        attack: ``badnets``, ``blended``, ``wanet``, ``sig`` or ``all``.
        output_dir: new, empty, or an earlier demo's folder.
        seed: seeds poisoning, model initialisation, training order and variation noise.
        train_rows, test_rows: use a stratified subset (shorter runs, e.g. for tests).
        teacher_epochs, student_epochs: training length.
        variation_options: ``ImageVariation.embedded`` options overriding the defaults
            (e.g. ``{"num_inference_steps": 4}`` for a quick run).
        push_to_hub: a Hub repo id: publish the distilled student there, with a model card
            (one attack only; the staged files stay in ``output_dir/hub``).
        settings: other :class:`DemoSettings` fields (alpha, temperature, teacher_logits, ...).

    Returns the metrics dict written to ``metrics.json`` (for ``all``: the summary,
    ``{"seed", "seconds", "attacks": {name: metrics}}``).
    """
    overrides = dict(settings)
    for name, value in (("train_rows", train_rows), ("test_rows", test_rows), ("teacher_epochs", teacher_epochs),
                        ("student_epochs", student_epochs), ("variation_options", variation_options)):
        if value is not None:
            overrides[name] = value
    unknown = sorted(set(overrides) - set(DemoSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(f"Unknown demo option(s) {unknown}; known: {sorted(DemoSettings.__dataclass_fields__)}.")
    demo_settings = DemoSettings(**overrides)
    _check_args(attack, seed, demo_settings)
    if push_to_hub is not None:
        from .hub import _check_repo_id

        _check_repo_id(push_to_hub)
        if attack == "all":
            raise ValueError("push_to_hub publishes one student: choose one attack, not 'all'.")
    output_dir = Path(output_dir)

    if attack != "all":
        _prepare_output_dir(output_dir, REPORT_FILES)
        return run_single(attack, output_dir, seed, demo_settings, push_to_hub)

    names = attack_names()
    _prepare_output_dir(output_dir, SUMMARY_FILES + names)
    for name in names:  # check every subfolder before any work starts
        _prepare_output_dir(output_dir / name, REPORT_FILES)
    started = time.time()
    results = {}
    for number, name in enumerate(names, 1):
        logger.info("=== attack %d/%d: %s ===", number, len(names), name)
        results[name] = run_single(name, output_dir / name, seed, demo_settings)
    summary = {"seed": seed, "seconds": round(time.time() - started, 1), "attacks": results}
    _write_json(output_dir / "summary.json", summary)
    _bar_chart({name: result["models"] for name, result in results.items()}).save(output_dir / "metrics.png")
    (output_dir / "report.md").write_text(_summary_report(summary))
    return summary


# --- report ------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def metrics_table(models: dict[str, dict[str, float]], markdown: bool = True) -> str:
    """The three models' C-Acc / ASR / R-Acc as a markdown (or plain) table."""
    header = ("model", "C-Acc", "ASR", "R-Acc")
    rows = [(name, *(f"{models[name][key]:.3f}" for key in METRIC_NAMES)) for name in MODEL_NAMES if name in models]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines)


_EXPLAIN = """\
- **teacher**: trained on the poisoned victim data; it learns the task and the backdoor.
- **student**: trained on diffusion variations of the same data, distilled from the teacher
  (alpha {alpha}, temperature {temperature}, teacher logits: {teacher_logits}).
- **student_cleaned**: the student again, after dropping the variations of every row that detection
  flagged as poisoned (no ground truth used).
- **variations_ce**: trained on the same variations with plain cross-entropy (no teacher).

C-Acc: accuracy on the clean test set. ASR: share of triggered non-target test images
classified as the target class {target}. R-Acc: share of them classified as their true class.
"""


def _detection_text(detection: dict) -> str:
    scores = ", ".join(f"{name} {value:.3f}" for name, value in detection["auroc_by_score"].items())
    return (
        f"Score `{detection['score']}` (teacher on each original vs. its variations): AUROC {detection['auroc']:.3f}. "
        f"Otsu's threshold {detection['threshold']:.3f} flagged {detection['flagged']} rows; "
        f"precision {detection['precision']:.3f}, recall {detection['recall']:.3f} "
        f"against the {detection['poisoned']} truly poisoned rows (ground truth used only to measure).\n\n"
        f"AUROC of every score: {scores}."
    )


def _single_report(metrics: dict) -> str:
    settings, variation = metrics["settings"], metrics["variation"]
    rows = metrics["rows"]
    lines = [
        f"# backdoor-guard demo: {metrics['attack']} (seed {metrics['seed']})",
        "",
        metrics_table(metrics["models"]),
        "",
        _EXPLAIN.format(target=TARGET_LABEL, **{k: settings[k] for k in ("alpha", "temperature", "teacher_logits")}),
        "## Detection",
        _detection_text(metrics["detection"]),
        "",
        "![suspicion scores of clean and poisoned rows](suspicion.png)",
        "",
        "## Setup",
        f"- data: scikit-learn digits at 16x16; {rows['train']} victim rows ({rows['poisoned']} poisoned), "
        f"{rows['test']} test rows ({rows['triggered_test']} triggered).",
        f"- attack: `{metrics['attack']}` {json.dumps(metrics['attack_config'])}, target {TARGET_LABEL}, "
        f"rate {POISON_RATE} of the eligible rows.",
        f"- variations: embedded DDPM, SDEdit strength {variation['strength']}, "
        f"{variation['num_inference_steps']} DDIM steps, eta {variation['eta']}, "
        f"{variation['num_variations']} per image, colour transfer {variation['color_transfer']}.",
        f"- time: {metrics['seconds']:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in metrics['timings'].items())}), "
        f"{rows['torch_threads']} torch thread(s).",
        "",
        "## Figures",
        "![clean / poisoned / variations](samples.png)",
        "",
        "Rows: clean training image, the poisoned image the victim trained on, its variation(s).",
        "",
        "![C-Acc, ASR and R-Acc per model](metrics.png)",
        "",
    ]
    return "\n".join(lines)


def _summary_report(summary: dict) -> str:
    lines = [f"# backdoor-guard demo: all attacks (seed {summary['seed']})", ""]
    lines += ["| attack | model | C-Acc | ASR | R-Acc |", "|---|---|---|---|---|"]
    for name, result in summary["attacks"].items():
        for model in MODEL_NAMES:
            values = result["models"][model]
            lines.append(f"| [{name}]({name}/report.md) | {model} | "
                         + " | ".join(f"{values[k]:.3f}" for k in METRIC_NAMES) + " |")
    lines += ["", f"Total time: {summary['seconds']:.0f} s.", "", "![per attack and model](metrics.png)", ""]
    return "\n".join(lines)


def _font():
    return ImageFont.load_default()


def _samples_figure(clean, poisoned, varied, num_variations: int, columns: int = 8, scale: int = 4) -> Image.Image:
    """Grid: for the first poisoned rows, the clean image, the poisoned one and each of its variations."""
    from .images import load_rgb

    rows = [int(r) for r in np.flatnonzero(np.asarray(poisoned["poisoned"]))[:columns]]
    if not rows:
        rows = list(range(min(columns, len(poisoned))))
    lines = [[load_rgb(clean[r]["image"]) for r in rows], [load_rgb(poisoned[r]["image"]) for r in rows]]
    sources = np.asarray(varied["source_index"])
    for v in range(num_variations):
        picks = [int(np.flatnonzero(sources == r)[v]) for r in rows]
        lines.append([load_rgb(varied[p]["image"]) for p in picks])
    return _grid(lines, ["clean", "poisoned"] + [f"variation {v + 1}" for v in range(num_variations)], scale)


def _grid(lines: list[list[Image.Image]], labels: list[str], scale: int = 4) -> Image.Image:
    cell = max(max(image.size) for line in lines for image in line) * scale
    margin, label_width, pad = 4, 80, 2
    width = label_width + len(lines[0]) * (cell + pad) + margin
    height = len(lines) * (cell + pad) + 2 * margin
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (line, label) in enumerate(zip(lines, labels)):
        y = margin + i * (cell + pad)
        draw.text((margin, y + cell // 2 - 5), label, fill=(0, 0, 0), font=_font())
        for j, image in enumerate(line):
            canvas.paste(image.resize((cell, cell), Image.NEAREST), (label_width + j * (cell + pad), y))
    return canvas


_COLOURS = {"clean_accuracy": (46, 125, 50), "attack_success_rate": (198, 40, 40), "robust_accuracy": (21, 101, 192)}
_SHORT = {"clean_accuracy": "C-Acc", "attack_success_rate": "ASR", "robust_accuracy": "R-Acc"}


def _bar_chart(results: dict[str, dict[str, dict[str, float]]]) -> Image.Image:
    """Grouped bars: for each attack and model, C-Acc, ASR and R-Acc on a 0..1 axis."""
    bar, gap, group_gap, plot_height = 16, 4, 36, 200
    left, top, bottom = 44, 34, 40
    groups = [(attack, model) for attack in results for model in MODEL_NAMES if model in results[attack]]
    group_width = len(METRIC_NAMES) * bar + gap
    width = left + len(groups) * (group_width + group_gap) + 20
    height = top + plot_height + bottom
    canvas = Image.new("RGB", (max(width, 320), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    base = top + plot_height
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = base - tick * plot_height
        draw.line([(left - 4, y), (width - 10, y)], fill=(220, 220, 220))
        draw.text((4, y - 5), f"{tick:.2f}", fill=(0, 0, 0), font=font)
    x = left + gap
    for attack, model in groups:
        values = results[attack][model]
        for k, key in enumerate(METRIC_NAMES):
            value = float(values[key])
            x0 = x + k * bar
            draw.rectangle([x0, base - value * plot_height, x0 + bar - 2, base], fill=_COLOURS[key])
        label = model if len(results) == 1 else f"{attack}"
        draw.text((x, base + 4), label, fill=(0, 0, 0), font=font)
        if len(results) > 1:
            draw.text((x, base + 16), model, fill=(80, 80, 80), font=font)
        x += group_width + group_gap
    draw.line([(left - 4, base), (width - 10, base)], fill=(0, 0, 0))
    legend_x = left
    for key in METRIC_NAMES:
        draw.rectangle([legend_x, 8, legend_x + 10, 18], fill=_COLOURS[key])
        draw.text((legend_x + 14, 7), _SHORT[key], fill=(0, 0, 0), font=font)
        legend_x += 70
    return canvas


def _histogram(scores, poisoned, bins: int = 20, threshold: float | None = None) -> Image.Image:
    """Overlaid histograms of suspicion scores for clean (blue) and poisoned (red) rows, share of each group."""
    scores, poisoned = np.asarray(scores, dtype=np.float64), np.asarray(poisoned, dtype=bool)
    low, high = float(scores.min()), float(scores.max())
    high = high if high > low else low + 1.0
    left, top, bottom, plot_width, plot_height = 44, 30, 34, 400, 180
    canvas = Image.new("RGB", (left + plot_width + 20, top + plot_height + bottom), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), _font()
    base = top + plot_height
    groups = [("clean", ~poisoned, (21, 101, 192)), ("poisoned", poisoned, (198, 40, 40))]
    shares = []
    for _, mask, _ in groups:
        counts, _ = np.histogram(scores[mask], bins=bins, range=(low, high))
        shares.append(counts / max(int(mask.sum()), 1))
    peak = max(float(max(share.max() for share in shares)), 1e-9)
    width = plot_width / bins
    for (name, mask, colour), share in zip(groups, shares):
        for b, value in enumerate(share):
            if value > 0:
                x0 = left + b * width
                draw.rectangle([x0 + 1, base - value / peak * plot_height, x0 + width - 1, base], outline=colour,
                               width=2)
    if threshold is not None and low <= threshold <= high:
        x = left + (threshold - low) / (high - low) * plot_width
        draw.line([(x, top), (x, base)], fill=(0, 0, 0), width=1)
        draw.text((x + 3, top), "threshold", fill=(0, 0, 0), font=font)
    draw.line([(left, base), (left + plot_width, base)], fill=(0, 0, 0))
    draw.text((left, base + 4), f"{low:.2f}", fill=(0, 0, 0), font=font)
    draw.text((left + plot_width - 30, base + 4), f"{high:.2f}", fill=(0, 0, 0), font=font)
    draw.text((left + plot_width // 2 - 40, base + 18), "suspicion score", fill=(0, 0, 0), font=font)
    draw.text((4, top - 4), f"{peak:.2f}", fill=(0, 0, 0), font=font)
    legend_x = left
    for name, mask, colour in groups:
        draw.rectangle([legend_x, 8, legend_x + 10, 18], outline=colour, width=2)
        draw.text((legend_x + 14, 7), f"{name} ({int(mask.sum())})", fill=(0, 0, 0), font=font)
        legend_x += 110
    return canvas


# --- command line ------------------------------------------------------------------------
def run_demo_cli(args) -> int:
    """Entry point of ``backdoor-guard demo`` (``args.attack``, ``args.output_dir``, ``args.seed``)."""
    from .hub import PublishError

    try:
        result = run_demo(attack=args.attack, output_dir=args.output_dir, seed=args.seed,
                          push_to_hub=getattr(args, "push_to_hub", None))
    except ValueError as error:
        logger.error("%s", error)
        return 2
    except PublishError as error:  # the run finished; only the upload failed, and its files are kept
        logger.error("%s", error)
        return 1
    per_attack = result["attacks"] if args.attack == "all" else {args.attack: result}
    for name, metrics in per_attack.items():
        print(f"\n{name} (seed {metrics['seed']}, {metrics['seconds']:.0f} s)")
        print(metrics_table(metrics["models"], markdown=False))
    print(f"\nReport: {Path(args.output_dir) / 'report.md'}")
    return 0
