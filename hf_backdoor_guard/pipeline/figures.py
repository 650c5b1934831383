"""The report's figures, drawn with matplotlib (object API only: no pyplot state, safe in any process).

* :func:`image_grid`: rows of images with a label per row (clean / poisoned / variations);
* :func:`gallery`: the most suspicious training images, each with its label, the class
  its variations suggest and its suspicion score;
* :func:`metrics_chart`: grouped bars of C-Acc, ASR and R-Acc per model (and attack);
* :func:`asr_chart`: attack success rate per attack for several models, with goal lines;
* :func:`suspicion_histogram`: the distribution of suspicion scores and the threshold.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image

# The shipped metrics keep their colors from figure to figure; a newly registered one takes the next free color.
METRIC_COLORS = {"clean_accuracy": "#2e7d32", "attack_success_rate": "#c62828", "robust_accuracy": "#1565c0"}
CLEAN_COLOR, POISONED_COLOR = "#1565c0", "#c62828"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _show(axis, image: Image.Image) -> None:
    axis.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])


def image_grid(rows: Sequence[tuple[str, Sequence[Image.Image]]], path: str | os.PathLike,
               title: str | None = None, column_titles: Sequence[str] | None = None) -> None:
    """One row per ``(label, images)``, all rows the same length; saved as a PNG at ``path``."""
    columns = max(len(images) for _, images in rows)
    figure = _figure(1.1 * columns + 1.2, 1.15 * len(rows) + (0.4 if title else 0.1))
    axes = np.atleast_2d(figure.subplots(len(rows), columns, squeeze=False))
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            axis = axes[r, c]
            if c < len(images):
                _show(axis, images[c])
            else:
                axis.set_axis_off()
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    for c, text in enumerate(column_titles or []):
        axes[0, c].set_title(text, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.savefig(path)


def gallery(images: Sequence[Image.Image], captions: Sequence[str], path: str | os.PathLike, *,
            title: str, marked: Sequence[bool] | None = None, columns: int = 8) -> None:
    """A grid of ``images`` with a caption under each; ``marked`` images get a red frame (e.g. truly poisoned)."""
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = _figure(1.45 * columns + 0.2, 1.75 * rows + 0.5)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    for index, axis in enumerate(axes.flat):
        if index >= len(images):
            axis.set_axis_off()
            continue
        _show(axis, images[index])
        axis.set_xlabel(captions[index], fontsize=7, linespacing=1.1)
        if marked is not None and marked[index]:
            for spine in axis.spines.values():
                spine.set_edgecolor(POISONED_COLOR)
                spine.set_linewidth(3)
    figure.suptitle(title, fontsize=10)
    figure.savefig(path)


def metrics_chart(results: dict[str, dict[str, dict[str, float]]], path: str | os.PathLike,
                  title: str | None = None, columns: int = 4) -> None:
    """Grouped bars of every metric per model on a 0..1 axis; one panel per group (an attack, or one run)."""
    from ..metrics import backdoor_metrics

    metrics = [m for m in backdoor_metrics() if any(m.name in values for g in results.values() for values in g.values())]
    spare = iter(f"C{i}" for i in range(3, 10))
    colors = {m.name: METRIC_COLORS.get(m.name) or next(spare, "grey") for m in metrics}
    panels = len(results)
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    widest = max(len(models) for models in results.values())
    figure = _figure(max(4.5, (0.9 * widest + 1.0) * columns), 3.0 * rows + 0.6)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False, sharey=True))
    width = 0.8 / max(len(metrics), 1)
    for axis, (group, models) in zip(axes.flat, results.items()):
        positions = np.arange(len(models))
        for k, metric in enumerate(metrics):
            values = [models[model].get(metric.name, np.nan) for model in models]
            bars = axis.bar(positions + (k - (len(metrics) - 1) / 2) * width, values, width,
                            label=metric.label, color=colors[metric.name])
            axis.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        axis.set_xticks(positions, list(models), fontsize=7, rotation=20, ha="right")
        axis.set_ylim(0, 1.1)
        axis.set_yticks(np.linspace(0, 1, 6))
        axis.grid(axis="y", alpha=0.3)
        axis.set_xlabel("model", fontsize=8)
        if panels > 1:
            axis.set_title(group, fontsize=9)
    for axis in axes[:, 0]:
        axis.set_ylabel("share of test images")
    for axis in list(axes.flat)[panels:]:
        axis.set_axis_off()
    figure.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(metrics),
                  fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.savefig(path)


def asr_chart(asr: dict[str, dict[str, float]], path: str | os.PathLike, *, title: str | None = None,
              goals: Sequence[float] = ()) -> None:
    """Attack success rate per attack (groups on the x axis) for each model (one bar color each), with a dashed
    line at every value of ``goals``. ``asr``: attack -> model -> ASR."""
    models = list(dict.fromkeys(model for values in asr.values() for model in values))
    positions = np.arange(len(asr))
    width = 0.8 / max(len(models), 1)
    figure = _figure(max(5.0, 1.1 * len(asr) * max(len(models), 2) / 2 + 1.5), 3.6)
    axis = figure.subplots()
    for k, model in enumerate(models):
        values = [asr[attack].get(model, np.nan) for attack in asr]
        bars = axis.bar(positions + (k - (len(models) - 1) / 2) * width, values, width, label=model,
                        color=f"C{k}")
        axis.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    for goal in goals:
        axis.axhline(goal, color="black", linestyle="--", linewidth=0.8)
        axis.text(positions[-1] + 0.45, goal, f" {goal:g}", va="center", fontsize=7)
    axis.set_xticks(positions, list(asr), fontsize=8)
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("attack success rate")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, ncol=len(models), loc="upper center", frameon=False)
    if title:
        axis.set_title(title, fontsize=10)
    figure.savefig(path)


def suspicion_histogram(scores, path: str | os.PathLike, *, threshold: float | None = None, poisoned=None,
                        score_name: str = "suspicion", bins: int = 30) -> None:
    """Histogram of suspicion scores (clean vs. poisoned rows when ``poisoned`` is known) with the threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    low, high = float(scores.min()), float(scores.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    figure = _figure(6.0, 3.4)
    axis = figure.subplots()
    if poisoned is None:
        axis.hist(scores, bins=edges, color=CLEAN_COLOR, alpha=0.8, label=f"all rows ({len(scores)})")
    else:
        poisoned = np.asarray(poisoned, dtype=bool)
        for mask, color, name in ((~poisoned, CLEAN_COLOR, "clean"), (poisoned, POISONED_COLOR, "poisoned")):
            axis.hist(scores[mask], bins=edges, color=color, alpha=0.7, label=f"{name} ({int(mask.sum())})")
    if threshold is not None and math.isfinite(threshold):
        axis.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    axis.set_yscale("log")
    axis.set_xlabel(f"suspicion score ({score_name})")
    axis.set_ylabel("rows (log scale)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.savefig(path)


__all__ = ["asr_chart", "image_grid", "gallery", "metrics_chart", "suspicion_histogram"]
