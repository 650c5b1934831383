"""A shortened `backdoor-guard demo`: real data, real embedded model, real training, real files."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from hf_backdoor_guard.cli import build_parser, main
from hf_backdoor_guard.benchmark.demo import REPORT_FILES, run_demo
from hf_backdoor_guard.runtime.outputs import MARKER
from hf_backdoor_guard.pipeline.defend import OUTPUT_NAMES

QUICK = dict(max_train_samples=120, max_eval_samples=60, num_train_epochs=3, student_epochs=3,
             variation_options={"num_inference_steps": 4, "num_variations": 1})


def _check_metrics(models):
    assert list(models) == ["teacher", "teacher_kept", "student", "student_retaught", "student_cleaned",
                            "variations_ce"]
    for values in models.values():
        assert set(values) == {"clean_accuracy", "attack_success_rate", "robust_accuracy"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
        # ASR and R-Acc are shares of the same triggered images
        assert values["attack_success_rate"] + values["robust_accuracy"] <= 1.0 + 1e-9


def test_short_demo_writes_every_report_file(tmp_path):
    out = tmp_path / "demo"
    result = run_demo("badnets", out, seed=3, **QUICK)
    written = {p.name for p in out.iterdir() if not p.name.startswith(".hf-backdoor-guard.lock")}
    assert written == set(REPORT_FILES) | {name for name in OUTPUT_NAMES if not name.endswith(".tmp")} | {MARKER}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attack"] == "badnets" and metrics["seed"] == 3 and metrics["seconds"] > 0
    _check_metrics(metrics["models"])
    assert metrics["models"] == result["models"]
    assert metrics["rows"]["train"] == 120 and metrics["rows"]["poisoned"] == 11  # ceil(10% of 108 non-target)
    # even a short run learns something: well above the 10% of guessing
    assert metrics["models"]["teacher"]["clean_accuracy"] > 0.3
    report = (out / "report.md").read_text()
    assert "| teacher |" in report and "| student |" in report and "| variations_ce |" in report
    assert "samples.png" in report and "metrics.png" in report
    samples = Image.open(out / "samples.png")
    assert samples.width > 8 * 64 and samples.height >= 3 * 64  # clean/poisoned/variation, 8 columns
    chart = np.asarray(Image.open(out / "metrics.png").convert("RGB"))
    assert chart.shape[0] > 100 and (chart != 255).any()
    assert "gallery.png" in report and Image.open(out / "gallery.png").width > 8 * 64
    # detection against the ground truth, with every score's AUROC, and the histogram of scores
    detection = metrics["detection"]
    assert set(detection) >= {"auroc", "precision", "recall", "auroc_by_score", "threshold", "flagged"}
    assert 0.0 <= detection["auroc"] <= 1.0 and detection["poisoned"] == 11
    assert detection["auroc_by_score"]["combined"] == detection["auroc"]
    assert "| student_cleaned |" in report and "suspicion.png" in report and "AUROC" in report
    # the same run's defend outputs: flagged rows and a robust model with its card
    flagged = json.loads((out / "detection.json").read_text())["flagged"]
    assert len(flagged) == detection["flagged"] and len(set(flagged)) == len(flagged)
    from hf_backdoor_guard import load_robust_model

    # model/ is the student distilled from the second teacher (on the kept rows), and says so
    assert metrics["shipped"] == "student_retaught" and "| student_retaught |" in report
    shipped = load_robust_model(str(out / "model"))
    assert shipped.metrics["badnets"] == pytest.approx(metrics["models"]["student_retaught"])
    assert "rows detection kept" in (out / "model" / "README.md").read_text()
    records = json.loads((out / "stages" / "stages.json").read_text())
    assert records["teacher_kept"]["details"]["rows"] == records["teacher"]["details"]["rows"] - len(flagged)


def test_rerun_in_its_own_folder_and_user_files_are_protected(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_demo("badnets", out, **QUICK)
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    # the CLI reports the problem instead of a traceback, before any work
    assert main(["demo", "--output-dir", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_bad_seed_fails_before_the_marker_and_the_data(tmp_path, monkeypatch):
    """Issue 16, defect 10: `demo --seed -1` wrote its marker and loaded the data before failing."""
    from hf_backdoor_guard import data

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the options were checked")

    monkeypatch.setattr(data, "load_digits_dataset", no_data)
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--seed", "-1"]) == 2
    assert not out.exists()
    with pytest.raises(ValueError, match="seed"):
        run_demo("all", out, seed=-1)
    assert not out.exists()


def test_all_runs_every_registered_attack():
    from hf_backdoor_guard.attacks import ATTACKS
    from hf_backdoor_guard.benchmark.demo import attack_names

    assert attack_names() == tuple(ATTACKS.names()) and len(attack_names()) >= 4


def test_all_attacks_write_one_folder_each_and_a_summary(tmp_path, monkeypatch, caplog):
    # Two of the registered attacks (one that relabels, one clean-label) keep this test short; the
    # test above checks that "all" means every registered attack.
    from hf_backdoor_guard.benchmark import demo

    monkeypatch.setattr(demo, "attack_names", lambda: ("badnets", "sig"))
    out = tmp_path / "all"
    quick = dict(QUICK, max_train_samples=60, max_eval_samples=40, num_train_epochs=1, student_epochs=1)
    caplog.set_level(logging.INFO, logger="hf_backdoor_guard.variations.reuse")
    summary = run_demo("all", out, seed=1, **quick)
    assert list(summary["attacks"]) == ["badnets", "sig"]
    # sig takes badnets' variations of the rows neither attack changed (SIG poisons target-class images only)
    reused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Reusing the variations")]
    assert reused == [f"Reusing the variations of {unchanged} of 60 rows from {out / 'badnets' / 'stages' / 'variations'}."
                      for unchanged in [60 - summary["attacks"]["badnets"]["rows"]["poisoned"]
                                        - summary["attacks"]["sig"]["rows"]["poisoned"]]]
    assert summary["attacks"]["sig"]["settings"]["reuse_variations"] == [str(out / "badnets")]
    # a run with other variation options (here the seed) cannot reuse it: refused before any work, naming the option
    from hf_backdoor_guard.benchmark.demo import demo_config, demo_preset

    with pytest.raises(ValueError, match=r"badnets made its variations with other options \(seed: was 1, now 2\)"):
        demo_config("sig", tmp_path / "other", 2, demo_preset({**quick, "reuse_variations": [str(out / "badnets")]}))
    for name, metrics in summary["attacks"].items():
        assert metrics["attack"] == name
        _check_metrics(metrics["models"])
        assert {p.name for p in (out / name).iterdir()} >= set(REPORT_FILES)
    assert json.loads((out / "summary.json").read_text())["attacks"]["sig"]["attack"] == "sig"
    report = (out / "report.md").read_text()
    assert "(sig/report.md)" in report and Image.open(out / "metrics.png").width > 300
    # a rerun with other settings is refused, naming the option; --overwrite starts over (our files only)
    (out / "sig" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="seed: was 1, now 2"):
        run_demo("sig", out / "sig", seed=2, **quick)
    run_demo("sig", out / "sig", seed=2, overwrite=True, **quick)
    assert json.loads((out / "sig" / "metrics.json").read_text())["seed"] == 2
    assert (out / "sig" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs, word",
    [({"attack": "trojan"}, "attack"), ({"seed": "0"}, "seed"), ({"train_rows": 5}, "train_rows"),
     ({"temperature": 0}, "temperature"), ({"teacher_logits": "max"}, "teacher_logits"),
     ({"epochs": 3}, "unknown option")],
)
def test_bad_options_raise_before_work(tmp_path, kwargs, word):
    kwargs = {"attack": "badnets", **kwargs}
    with pytest.raises(ValueError, match=word):
        run_demo(output_dir=tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_demo_options():
    args = build_parser().parse_args(["demo", "--attack", "all", "--output-dir", "d", "--seed", "4",
                                      "--reuse-variations", "earlier"])
    assert (args.attack, args.output_dir, args.seed, args.reuse_variations) == ("all", "d", 4, ["earlier"])


def test_push_to_hub_publishes_the_shipped_model_with_its_card(tmp_path, monkeypatch):
    """The upload itself cannot happen offline: a recording stand-in for HfApi takes its place."""
    from hf_backdoor_guard.hub import publish as hub

    calls = []

    class RecordingHfApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs.get("repo_type")))

        def upload_folder(self, *, repo_id, folder_path, repo_type=None, **kwargs):
            calls.append(("upload_folder", repo_id, folder_path, repo_type))

    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    out = tmp_path / "demo"
    metrics = run_demo("badnets", out, seed=0, push_to_hub="me/digits-robust", **QUICK)
    staged = out / "model"
    assert metrics["hub"] == {"repo_id": "me/digits-robust", "staged": str(staged)}
    assert calls == [("create_repo", "me/digits-robust", "model"),
                     ("upload_folder", "me/digits-robust", str(staged), "model")]
    assert (staged / "model.safetensors").is_file() and (staged / "preprocessor_config.json").is_file()
    card_metrics = hub.card_metrics(hub.ModelCard.load(staged / "README.md"))
    assert card_metrics["badnets"] == pytest.approx(metrics["models"][metrics["shipped"]])
    assert json.loads((out / "metrics.json").read_text())["hub"]["repo_id"] == "me/digits-robust"


def test_push_to_hub_options_are_checked_before_work(tmp_path):
    with pytest.raises(ValueError, match="not a valid Hub repository id"):
        run_demo("badnets", tmp_path / "a", push_to_hub="not a repo!", **QUICK)
    with pytest.raises(ValueError, match="choose one attack"):
        run_demo("all", tmp_path / "b", push_to_hub="me/x", **QUICK)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert build_parser().parse_args(["demo", "--push-to-hub", "me/x"]).push_to_hub == "me/x"
