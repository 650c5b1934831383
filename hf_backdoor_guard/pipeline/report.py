"""What a ``defend`` (or demo) run leaves in its output folder, written by the main process after the stages.

``model/`` (the shipped model, ``config.shipped_model``, with a card), ``cleaned/``, ``detection.json``,
``metrics.json``, the figures and ``report.md``; then, if asked, the upload.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.outputs import write_folder_files, write_json_atomic, write_text_atomic
from .stages import flagged_mask
from . import figures

logger = logging.getLogger(__name__)

MODEL_ORDER = ("teacher", "teacher_kept", "student", "student_retaught", "student_cleaned", "variations_ce")
EXPLAIN = {
    "teacher": "trained on the training data as given (possibly poisoned); it learns the task, and any backdoor.",
    "teacher_kept": "the teacher again, trained on the rows detection did not flag.",
    "student": "trained on diffusion variations of the same data, distilled from the teacher's soft labels.",
    "student_retaught": "the student distilled from `teacher_kept` instead, on the variations of every row.",
    "student_cleaned": "the student again, after dropping the variations of every row detection flagged.",
    "variations_ce": "trained on the same variations with plain cross-entropy (no teacher): a baseline.",
}


def metrics_table(models: dict[str, dict[str, float]], markdown: bool = True) -> str:
    """The models' metrics (C-Acc, and ASR / R-Acc when measured) as a markdown or plain table."""
    from ..metrics import backdoor_metrics

    measured = [m for m in backdoor_metrics() if any(m.name in values for values in models.values())]
    keys = [m.name for m in measured]
    header = ("model", *(m.label for m in measured))
    rows = [(name, *(f"{models[name][key]:.3f}" for key in keys)) for name in MODEL_ORDER if name in models]
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows])


# --- detection --------------------------------------------------------------------------
def detection_summary(train, variations, detection: dict, research: bool) -> dict[str, Any]:
    """Counts, threshold and, in research mode, AUROC / precision / recall against the ``poisoned`` column."""
    from ..detection import SCORES, suspicion_scores
    from ..metrics import auroc, detection_metrics

    suspicion = np.asarray(detection["suspicion"], dtype=np.float64)
    flagged = np.zeros(len(suspicion), dtype=bool)
    flagged[np.asarray(detection["flagged"], dtype=np.int64)] = True
    summary: dict[str, Any] = {"score": detection["score"]}
    if research:
        truth = np.asarray(train["poisoned"], dtype=bool)
        measured = detection_metrics(suspicion, truth, flagged=flagged)
        summary.update({key: round(float(value), 4) for key, value in measured.items()})
        sources, labels = variations["source_index"], train["label"]
        summary["auroc_by_score"] = {
            name: round(auroc(suspicion_scores(detection["original_logits"], detection["variation_logits"], sources,
                                               labels, name)[0], truth), 4)
            for name in SCORES
        }
        summary["poisoned"] = int(truth.sum())
    threshold = detection["threshold"]
    summary.update({"threshold": None if threshold is None else round(float(threshold), 4),
                    "flagged": int(flagged.sum()), "rows": len(suspicion)})
    return summary


# --- figures ----------------------------------------------------------------------------
def _images(ds, rows) -> list:
    from ..images import load_rgb

    return [load_rgb(ds[int(r)]["image"]) for r in rows]


def _draw_figures(output_dir: Path, clean_train, train, variations, detection: dict, summary: dict,
                  models: dict, label_names: list[str], research: bool, gallery_size: int, title: str) -> None:
    suspicion = np.asarray(detection["suspicion"])
    order = np.argsort(-suspicion, kind="mergesort")[:gallery_size]
    predicted = detection["variation_prediction"]
    truth = np.asarray(train["poisoned"], dtype=bool) if research else None
    captions = [f"row {int(r)}, score {suspicion[r]:.2f}\nlabel {label_names[train[int(r)]['label']]}\n"
                f"variations say: {label_names[predicted[r]]}" for r in order]
    figures.gallery(_images(train, order), captions, output_dir / "gallery.png",
                    title=f"The {len(order)} most suspicious training images ({summary['flagged']} of "
                          f"{summary['rows']} flagged)" + ("; red frame: truly poisoned" if research else ""),
                    marked=None if truth is None else truth[order].tolist())
    figures.suspicion_histogram(suspicion, output_dir / "suspicion.png", threshold=summary["threshold"],
                                poisoned=truth, score_name=summary["score"])
    figures.metrics_chart({title: models}, output_dir / "metrics.png", title=title)
    if research and truth.any():
        rows = np.flatnonzero(truth)[:8]
    else:  # spread over the split: datasets sorted by class (imagefolder) would show one class only
        rows = np.unique(np.linspace(0, len(train) - 1, min(8, len(train))).astype(int))
    sources = np.asarray(variations["source_index"])
    per_row = [np.flatnonzero(sources == r) for r in rows]
    lines = [("clean", _images(clean_train, rows)), ("poisoned", _images(train, rows))] if research \
        else [("training image", _images(train, rows))]
    for v in range(min(len(found) for found in per_row)):
        lines.append((f"variation {v + 1}", _images(variations, [found[v] for found in per_row])))
    figures.image_grid(lines, output_dir / "samples.png",
                       column_titles=[f"row {int(r)}" for r in rows])


# --- model folder -----------------------------------------------------------------------
def _card_details(config, result: dict) -> dict[str, Any]:
    variation = {k: v for k, v in (result.get("variation") or {}).items()
                 if k in ("family", "num_variations", "num_inference_steps", "guidance_scale", "strength", "eta")}
    teacher = (f"{config.model_name_or_path} trained on the training rows detection kept (a first one, trained on "
               "every row, scored them)" if config.retrain_teacher else
               f"{config.model_name_or_path} trained on the training split")
    return dict(base_dataset=result["data"], teacher=teacher,
                diffusion_model=config.diffusion_model, diffusion_settings=variation,
                distillation_settings={"alpha": config.alpha, "temperature": config.temperature,
                                       "teacher_logits": config.teacher_logits,
                                       "teacher_retrained_on_kept_rows": config.retrain_teacher}, seed=config.seed)


def local_repo_name(output_dir: Path) -> str:
    """The repo name a card shows when nothing is pushed: the output folder's name as a valid Hub name
    (a folder named "my run" or "données" must not fail a run that never asked for the Hub)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "-", output_dir.resolve().name).strip("-_")[:80]
    return f"{name or 'defend'}-robust"


def _write_model(output_dir: Path, config, shipped_model, result: dict, push: bool):
    """``model/``: the shipped model ``(model, processor)`` staged by ``hub.publish_model`` with its card.

    With an attack (research) the card states C-Acc, ASR and R-Acc against it; without
    one, only clean accuracy was measured, and the card says so (attack ``"none"``).
    """
    from ..hub.cards import NO_ATTACK
    from ..hub.publish import publish_model

    model, processor = shipped_model
    repo_id = config.push_to_hub or local_repo_name(output_dir)
    models, shipped = result["models"], result["shipped"]
    if config.research:
        metrics, teacher = {config.attack_name: models[shipped]}, {config.attack_name: models["teacher"]}
        research = dict(target_label=config.target_label, poison_rate=config.poison_rate)
    else:
        metrics = {NO_ATTACK: {"clean_accuracy": models[shipped]["clean_accuracy"]}}
        teacher = {NO_ATTACK: {"clean_accuracy": models["teacher"]["clean_accuracy"]}}
        research = {}
    return publish_model(model, repo_id, metrics, processor, output_dir=output_dir / "model", push=push,
                         teacher_metrics=teacher, **research, **_card_details(config, result))


# --- everything -------------------------------------------------------------------------
def _data_name(config, inputs) -> str:
    if config.dataset_name is None:
        return (inputs.data_settings or {}).get("dataset", "data given in code")
    return config.dataset_name + (f" ({config.data_dir})" if config.data_dir else "")



def write_outputs(output_dir: Path, run, config, inputs, data, variations, detection: dict, scores: dict, *,
                  shipped_model, started: float, report_title: str | None = None) -> dict:
    """Write the output folder's files and return the run's numbers (also in ``metrics.json``)."""
    import torch

    begun = time.perf_counter()
    train = data["train"]
    summary = detection_summary(train, variations, detection, config.research)
    written = {key: detection[key] for key in ("score", "threshold", "flagged", "suspicion", "variation_prediction")}
    if inputs.source_rows is not None:  # a subset or a held-out share: name rows as the input split numbers them
        written["flagged"] = [inputs.source_rows[row] for row in detection["flagged"]]
        written["rows"] = inputs.source_rows
    write_json_atomic(output_dir / "detection.json", written)
    renames = {old: new for old, new in (("image", config.image_column_name), ("label", config.label_column_name)) if old != new}
    kept = np.flatnonzero(~flagged_mask(detection))  # an empty cleaned/ where every row was flagged
    cleaned = train.select(kept).flatten_indices().rename_columns(renames)
    write_folder_files(output_dir, "cleaned", lambda folder: cleaned.save_to_disk(str(folder)))

    record = run.record("variations") or {}
    result: dict[str, Any] = {
        "attack": config.attack_name,
        "seed": config.seed,
        "seconds": 0.0,
        "models": scores,
        "shipped": config.shipped_model,  # the model in model/
        "detection": summary,
        "timings": run.timings(),
        "attack_config": inputs.attack.config() if inputs.attack is not None else None,
        "variation": {k: v for k, v in (record.get("details") or {}).get("variation", {}).items()
                      if k not in ("scheduler", "algorithm")},
        "settings": config.to_dict(),
        "rows": {"train": len(train), "kept": len(kept), "test": len(data["eval"]),
                 "torch_threads": torch.get_num_threads()},
        "data": _data_name(config, inputs),
        "eval_split": inputs.eval_name,
    }
    title = report_title or f"backdoor-guard defend: {result['data']}"
    if config.research:
        result["rows"]["poisoned"] = int(np.sum(train["poisoned"]))
        result["rows"]["triggered_test"] = int(np.sum(np.asarray(data["eval"]["label"]) != config.target_label))
    _draw_figures(output_dir, inputs.train, train, variations, detection, summary, scores, inputs.label_names,
                  config.research, config.gallery_size, title)
    _write_model(output_dir, config, shipped_model, result, push=False)
    result["timings"]["outputs"] = round(time.perf_counter() - begun, 2)
    result["seconds"] = round(time.time() - started, 1)
    write_json_atomic(output_dir / "metrics.json", result)
    write_text_atomic(output_dir / "report.md", render_report(result, config, title))
    if config.push_to_hub:  # last: a failed upload leaves a complete run behind
        _write_model(output_dir, config, shipped_model, result, push=True)
        result["hub"] = {"repo_id": config.push_to_hub, "staged": str(output_dir / "model")}
        write_json_atomic(output_dir / "metrics.json", result)
    logger.info("Done in %.0f s: %s", result["seconds"], output_dir)
    return result


def render_report(result: dict, config, title: str) -> str:
    """``report.md``: the models' numbers, the suspicious rows with the gallery, the outputs, the setup, the time."""
    detection, rows = result["detection"], result["rows"]
    models = result["models"]
    lines = [f"# {title}", "", metrics_table(models), ""]
    lines += [f"- **{name}**: {EXPLAIN[name]}" + (" The robust model (`model/`)." if name == result["shipped"] else "")
              for name in MODEL_ORDER if name in models]
    lines.append("")
    lines.append(f"C-Acc: accuracy on the clean `{result['eval_split']}` split ({rows['test']} images).")
    if config.research:
        lines.append(f"ASR: share of the {rows['triggered_test']} triggered non-target test images classified as the "
                     f"target class {config.target_label}; R-Acc: share of them classified as their true class.")
    threshold = "none" if detection["threshold"] is None else f"{detection['threshold']:.3f}"
    lines += [
        "", "## Suspicious rows", "",
        f"Detection flagged **{detection['flagged']} of {detection['rows']}** training rows (score "
        f"`{detection['score']}`: the teacher on each image vs. on its variations; threshold {threshold}). "
        "Their row indices are in `detection.json`; `cleaned/` holds the other rows.",
    ]
    if config.research:
        scores = ", ".join(f"{name} {value:.3f}" for name, value in detection["auroc_by_score"].items())
        lines += ["", f"Against the {detection['poisoned']} truly poisoned rows (ground truth used only to measure): "
                      f"AUROC {detection['auroc']:.3f}, precision {detection['precision']:.3f}, recall "
                      f"{detection['recall']:.3f}. AUROC of every score: {scores}."]
    lines += ["", "![the most suspicious training images](gallery.png)", "",
              "Each image: its row, suspicion score, label, and the class the teacher sees on its variations.", "",
              "![suspicion scores](suspicion.png)", "", "![metrics per model](metrics.png)", "",
              "![training images and their variations](samples.png)", ""]
    variation = result.get("variation") or {}
    lines += ["## Setup", "",
              f"- data: {result['data']}: {rows['train']} training rows"
              + (f" ({rows['poisoned']} poisoned)" if config.research else "") + f", {rows['test']} test rows.",
              f"- classifier: `{config.model_name_or_path}`; teacher {config.num_train_epochs:g} epochs, student distilled "
              f"(alpha {config.alpha}, temperature {config.temperature}, teacher logits {config.teacher_logits})"
              + (" from a second teacher trained on the kept rows" if config.retrain_teacher else "") + ".",
              f"- variations: `{config.diffusion_model}` "
              + ", ".join(f"{k} {variation[k]}" for k in ("num_variations", "strength", "num_inference_steps",
                                                         "guidance_scale", "eta", "color_transfer")
                          if variation.get(k) is not None) + "."]
    if config.research:
        lines.append(f"- attack: `{config.attack_name}` {json.dumps(result['attack_config'])}, "
                     f"target {config.target_label}.")
    lines += ["", "## Time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in result["timings"].items()]
    lines += ["", f"Total for this run: {result['seconds']:.0f} s ({rows['torch_threads']} torch thread(s)); a stage "
                  "finished by an earlier run keeps the time it took then.", ""]
    return "\n".join(lines)


__all__ = ["detection_summary", "metrics_table", "render_report", "write_outputs"]
