"""`backdoor-guard redteam`: the adaptive attacks through the demo, a clean reference, the canary and re-tuning."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_worlds import QUICK, toy_world  # noqa: E402,F401  (the fixture: a tiny world with a tiny DDIM)

from hf_backdoor_guard.benchmark.redteam import adaptive_attacks, run_redteam  # noqa: E402
from hf_backdoor_guard.cli import build_parser, main  # noqa: E402

torch.set_num_threads(1)


def test_the_red_team_is_every_attack_marked_adaptive():
    from hf_backdoor_guard.attacks import ATTACKS

    assert adaptive_attacks() == ("lowfreq", "border", "tint", "stroke", "surviving")
    assert not any(ATTACKS[name].adaptive for name in ("badnets", "blended", "wanet", "adaptive_blend"))
    args = build_parser().parse_args(["redteam", "--seed", "2", "--attacks", "border", "tint"])
    assert (args.seed, args.attacks, args.benchmark, args.output_dir) == (2, ["border", "tint"], "digits",
                                                                          "backdoor-guard-redteam")


def test_redteam_writes_its_table_from_the_demo_runs_and_resumes(tmp_path, toy_world):
    out = tmp_path / "rt"
    result = run_redteam(out, seed=0, attacks=["border", "tint"], benchmark="toy-fashion", **QUICK)
    assert list(result["attacks"]) == ["border", "tint"]
    for name, row in result["attacks"].items():
        demo = json.loads((out / "attacks" / name / "metrics.json").read_text())
        assert row["teacher"] == demo["models"]["teacher"] and row["student"] == demo["models"]["student"]
        assert row["shipped"] == demo["shipped"] == "student_retaught"
        assert row["model"] == demo["models"]["student_retaught"]
        assert 0.0 <= row["clean_reference"]["attack_success_rate"] <= 1.0
        assert -1.0 <= row["survival"] <= 2.0 and row["survival"] == result["canary"]["results"][name]["survival"]
        curve = row["retuning"]["asr_model"]
        assert len(curve) == 11 and curve[0] == pytest.approx(row["model"]["attack_success_rate"], abs=1e-6)
    report = (out / "redteam.md").read_text()
    assert "| [border](attacks/border/report.md) |" in report and "Canary:" in report
    assert (out / "redteam.png").stat().st_size > 1000
    assert json.loads((out / "redteam.json").read_text())["attacks"] == result["attacks"]

    reference = out / "reference" / "teacher" / "model.safetensors"
    stamp = reference.stat().st_mtime_ns
    again = run_redteam(out, seed=0, attacks=["border", "tint"], benchmark="toy-fashion", **QUICK)
    assert again["attacks"] == result["attacks"] and reference.stat().st_mtime_ns == stamp  # reused, not retrained

    (out / "mine.txt").write_text("a user's file")
    assert main(["redteam", "--benchmark", "toy-fashion", "--output-dir", str(out), "--seed", "1",
                 "--attacks", "border"]) == 2  # other settings: refused, nothing removed
    assert (out / "mine.txt").exists() and reference.exists()


def test_redteam_refuses_bad_input_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="attacks must be distinct registered names"):
        run_redteam(tmp_path / "a", attacks=["border", "border"])
    with pytest.raises(ValueError, match="unknown option"):
        run_redteam(tmp_path / "b", attacks=["border"], epochs=3)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
