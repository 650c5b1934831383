"""The leaderboard of ``backdoor-guard compare``: DER, ``leaderboard.json``, ``leaderboard.md`` and a scatter figure.

One attack::

    {"attack": "badnets", "seed": 0,
     "defenses": {"none": {"clean_accuracy", "attack_success_rate", "robust_accuracy", "der",
                           "seconds", "assumes", ...}, "student": {...}, ...}}

``--attack all``: ``{"seed": 0, "attacks": {"badnets": <one attack's object>, ...}}``.
Extra keys in a defense's entry (``detection``, ``options``) are kept in the JSON.

DER is BackdoorBench's defense effectiveness rating (``utils/metric.py``,
``analysis/visual_metric.py``): ``(max(0, dASR) - max(0, dCAcc) + 1) / 2`` with
``dASR = ASR_none - ASR_defense`` and ``dCAcc = CAcc_none - CAcc_defense``; 1 means the
ASR fell from 1 to 0 at no accuracy cost, 0.5 means nothing changed.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

ENTRY_KEYS = ("clean_accuracy", "attack_success_rate", "robust_accuracy", "der", "seconds", "assumes")
FILES = ("leaderboard.json", "leaderboard.md", "leaderboard.png")
REFERENCE = "none"
PANELS_PER_ROW = 4  # --attack all: a grid of panels rather than one very wide row


def defense_effectiveness_rating(reference: Mapping, defended: Mapping) -> float:
    """BackdoorBench's DER of ``defended`` against the undefended ``reference`` (both with C-Acc and ASR)."""
    values = []
    for record, role in ((reference, "reference"), (defended, "defended")):
        for key in ("clean_accuracy", "attack_success_rate"):
            value = record.get(key) if isinstance(record, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"The {role} record needs a finite '{key}', got {value!r}.")
            values.append(float(value))
    c_none, asr_none, c_defense, asr_defense = values
    return (max(0.0, asr_none - asr_defense) - max(0.0, c_none - c_defense) + 1.0) / 2.0


def leaderboard_entry(attack: str, seed: int, records: Mapping[str, Mapping]) -> dict:
    """One attack's object; each defense's DER is (re)computed against ``"none"``."""
    if REFERENCE not in records:
        raise ValueError(f"The leaderboard needs the undefended model '{REFERENCE}' as the DER reference; "
                         f"got {sorted(records)}.")
    defenses = {}
    for name, record in records.items():
        entry = dict(record)
        entry["der"] = round(defense_effectiveness_rating(records[REFERENCE], record), 4)
        defenses[name] = entry
    board = {"attack": attack, "seed": seed, "defenses": defenses}
    check_leaderboard(board)
    return board


def check_leaderboard(board: Mapping) -> None:
    """``ValueError`` naming what is missing when ``board`` is neither form above."""
    if not isinstance(board, Mapping):
        raise ValueError(f"A leaderboard is a dict, got {type(board).__name__}.")
    if "attacks" in board:
        if not isinstance(board["attacks"], Mapping) or not board["attacks"]:
            raise ValueError("leaderboard['attacks'] must map attack names to one-attack leaderboards.")
        for name, single in board["attacks"].items():
            _check_single(single, f"leaderboard['attacks']['{name}']")
        return
    _check_single(board, "leaderboard")


def _check_single(board, where: str) -> None:
    for key in ("attack", "seed", "defenses"):
        if key not in board:
            raise ValueError(f"{where} has no '{key}' (keys: {sorted(board)}).")
    if not isinstance(board["defenses"], Mapping) or not board["defenses"]:
        raise ValueError(f"{where}['defenses'] must map defense names to their results.")
    for name, entry in board["defenses"].items():
        missing = [key for key in ENTRY_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{where}['defenses']['{name}'] lacks {missing}.")


def _singles(board: Mapping) -> list[Mapping]:
    return list(board["attacks"].values()) if "attacks" in board else [board]


TABLE_HEADER = ("defense", "C-Acc", "ASR", "R-Acc", "DER", "seconds", "clean data", "training", "inference cost")
DER_NOTE = ("DER: BackdoorBench's defense effectiveness rating against `none`, as its code computes it: "
            "(max(0, dASR) - max(0, dC-Acc) + 1) / 2, with dASR = ASR(none) - ASR and dC-Acc = C-Acc(none) - C-Acc "
            "(1: ASR from 1 to 0 at no accuracy cost; 0.5: no change).")
SECONDS_NOTE = "Seconds: the defense and its evaluation."


def leaderboard_table(single: Mapping, markdown: bool = True, assumptions: bool = True) -> str:
    """One attack's defenses as a markdown table, or as aligned plain text (``markdown=False``, for a terminal)."""
    header = TABLE_HEADER if assumptions else TABLE_HEADER[:6]
    rows = []
    for name, entry in single["defenses"].items():
        assumes = entry["assumes"] if isinstance(entry["assumes"], Mapping) else {}
        cells = [name, *(f"{entry[key]:.3f}" for key in ("clean_accuracy", "attack_success_rate",
                                                           "robust_accuracy", "der")), f"{entry['seconds']:.0f}"]
        if assumptions:
            cells += [str(assumes.get(key, "")) for key in ("clean_data", "training", "inference_cost")]
        rows.append(cells)
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [list(header), *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [list(header), *rows])


def leaderboard_markdown(board: Mapping, figure: str | None = "leaderboard.png", notes: Sequence[str] = ()) -> str:
    """The leaderboard as markdown: one table per attack, the notes (what the numbers mean), the figure."""
    check_leaderboard(board)
    lines = ["# Defenses compared", ""]
    for single in _singles(board):
        lines += [f"## {single['attack']} (seed {single['seed']})", "", leaderboard_table(single)]
        detected = {name: entry["detection"] for name, entry in single["defenses"].items() if "detection" in entry}
        if detected:
            lines += ["", "Poisoned-row detection of the defenses that score rows:", "",
                      "| defense | AUROC | precision | recall |", "|---|---|---|---|"]
            for name, detection in detected.items():
                cells = [detection.get(key) for key in ("auroc", "precision", "recall")]
                lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
        lines.append("")
    lines += [f"- {note}" for note in (DER_NOTE, *(notes or (SECONDS_NOTE,)))]
    if figure:
        lines += ["", f"![C-Acc vs. ASR of every defense]({figure})"]
    return "\n".join(lines) + "\n"


def _marker(name: str) -> str:
    if name == REFERENCE:
        return "s"
    if name.startswith("student"):  # the project's own method
        return "*"
    return "X" if name.endswith("_tuned") else "o"


def scatter_png(board: Mapping) -> bytes:
    """C-Acc against ASR of every defense, one panel per attack (up to 4 a row), as PNG bytes (no pyplot state).

    Each defense keeps one color and marker in every panel (square: ``none``; star: the
    project's students; X: ``*_tuned`` rows) and is named in one legend beside the panels:
    points of different defenses often coincide (ASR 0), which labels at the points would hide.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_leaderboard(board)
    singles = _singles(board)
    names = list(dict.fromkeys(name for single in singles for name in single["defenses"]))
    palette = colormaps["tab20"]
    color = {name: palette(index % 20) for index, name in enumerate(names)}
    columns = min(len(singles), PANELS_PER_ROW)
    rows = math.ceil(len(singles) / columns)
    figure = Figure(figsize=(4.2 * columns + 2.6, 4.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(singles):]:
        ax.set_visible(False)
    handles = {}
    for ax, single in zip(axes, singles):
        for name, entry in single["defenses"].items():
            handles[name] = ax.scatter([entry["attack_success_rate"]], [entry["clean_accuracy"]], label=name,
                                       s=90 if name.startswith("student") else 45, marker=_marker(name),
                                       color=color[name], edgecolors="black", linewidths=0.5, alpha=0.85, zorder=3)
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("attack success rate (ASR, lower is better)")
        ax.set_ylabel("clean accuracy (C-Acc)")
        ax.set_title(f"{single['attack']}, seed {single['seed']}")
        ax.grid(True, alpha=0.3)
    figure.legend([handles[name] for name in names], names, loc="outside right center", fontsize=8, frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_leaderboard(output_dir: str | os.PathLike, board: Mapping, notes: Sequence[str] = ()) -> list[Path]:
    """Write ``leaderboard.json``, ``leaderboard.md`` and ``leaderboard.png`` into ``output_dir`` (atomically).

    ``notes`` are listed under the tables of ``leaderboard.md`` (default: what the seconds cover).

    The folder must exist; claiming it (refusing someone else's files) is the caller's job
    (:func:`~hf_backdoor_guard.runtime.outputs.claim_output_dir`).
    """
    from ..runtime.outputs import write_bytes_atomic, write_json_atomic, write_text_atomic

    check_leaderboard(board)
    folder = Path(output_dir)
    if not folder.is_dir():
        raise ValueError(f"output_dir {folder} is not an existing folder.")
    json_path, markdown_path, figure_path = (folder / name for name in FILES)
    write_json_atomic(json_path, board)
    write_bytes_atomic(figure_path, scatter_png(board))
    write_text_atomic(markdown_path, leaderboard_markdown(board, figure=figure_path.name, notes=notes))
    return [json_path, markdown_path, figure_path]
