"""A shortened `backdoor-guard compare`: real digits, the real embedded diffusion model, real training, real files.

The method runs through the pipeline (run_defend) and the peer defenses through the
defenses package, on tiny settings (few rows, epochs and diffusion steps); the tests
check the files, their keys, DER against "none", the cache and the refusals of bad input.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from hf_backdoor_guard.cli import build_parser, main
from hf_backdoor_guard.defenses import DEFENSES, defense_variants
from hf_backdoor_guard.defenses.leaderboard import ENTRY_KEYS, leaderboard_table
from hf_backdoor_guard.runtime.outputs import MARKER
from hf_backdoor_guard.benchmark.compare import row_names, run_compare

TINY = dict(max_train_samples=120, max_eval_samples=60, num_train_epochs=3, student_epochs=3,
            variation_options={"num_inference_steps": 4, "num_variations": 1})
ROWS = ["fine_pruning", "spectral", "purification", "activation_clustering_tuned"]


def backdoorbench_der(none: dict, entry: dict) -> float:
    """DER as BackdoorBench's code computes it, written out again so the test does not reuse the package's."""
    d_asr = none["attack_success_rate"] - entry["attack_success_rate"]
    d_cacc = none["clean_accuracy"] - entry["clean_accuracy"]
    return (max(0.0, d_asr) - max(0.0, d_cacc) + 1) / 2


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "badnets"
    lines: list[str] = []
    board = run_compare("badnets", 3, out, defenses=ROWS, report=lines.append, **TINY)
    return {"out": out, "board": board, "lines": lines}


def _no_data(monkeypatch):
    from hf_backdoor_guard import data

    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded before the options were checked")

    monkeypatch.setattr(data, "load_digits_dataset", refuse)


def test_compare_writes_the_leaderboard_of_none_our_students_and_the_peer_defenses(compared):
    out, board, lines = compared["out"], compared["board"], compared["lines"]
    names = ["none", "student", "student_retaught", "student_cleaned", *ROWS]
    assert {p.name for p in out.iterdir()} >= {"leaderboard.json", "leaderboard.md", "leaderboard.png", "method",
                                              "defenses", MARKER}
    saved = json.loads((out / "leaderboard.json").read_text())
    assert saved == board and (saved["attack"], saved["seed"]) == ("badnets", 3)
    assert list(saved["defenses"]) == names
    none = saved["defenses"]["none"]
    for name, entry in saved["defenses"].items():
        assert set(ENTRY_KEYS) <= set(entry), name
        assert all(0.0 <= entry[key] <= 1.0 for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"))
        assert entry["der"] == pytest.approx(backdoorbench_der(none, entry), abs=1e-4), name
        assert entry["seconds"] >= 0 and {"clean_data", "training", "inference_cost"} <= set(entry["assumes"])
    assert none["der"] == 0.5
    # "none" and our students are the pipeline's own models and numbers (method/metrics.json)
    method = json.loads((out / "method" / "metrics.json").read_text())
    for row, model in (("none", "teacher"), ("student", "student"), ("student_retaught", "student_retaught"),
                       ("student_cleaned", "student_cleaned")):
        assert {k: saved["defenses"][row][k] for k in method["models"][model]} == method["models"][model]
    timings = method["timings"]
    share = timings["evaluation"] / 5  # teacher, teacher_kept, student, student_retaught, student_cleaned
    assert none["seconds"] == pytest.approx(timings["teacher"] + share, abs=0.06)
    student = saved["defenses"]["student"]
    assert student["seconds"] == pytest.approx(timings["variations"] + timings["detection"] + timings["student"]
                                               + share, abs=0.06)
    assert "teacher" not in student["info"]["seconds"]  # the teacher is counted in "none"
    retaught = saved["defenses"]["student_retaught"]  # the second teacher is the shipped model's own cost
    assert retaught["seconds"] == pytest.approx(
        sum(timings[stage] for stage in ("variations", "detection", "teacher_kept", "teacher_kept_logits",
                                         "student_retaught")) + share, abs=0.06)
    assert saved["defenses"]["student_cleaned"]["detection"]["auroc"] == method["detection"]["auroc"]
    # the baselines ran on the method's poisoned rows, with a 5% clean subset, from the method's diffusion model
    from datasets import load_from_disk

    poisoned = load_from_disk(str(out / "method" / "stages" / "data"))["train"]
    per_class = [poisoned["label"].count(label) for label in set(poisoned["label"])]
    assert saved["defenses"]["spectral"]["info"]["removed"] == sum(int(0.15 * count) for count in per_class)
    assert sum(poisoned["poisoned"]) > 0
    assert saved["defenses"]["purification"]["info"]["num_variations"] == 1
    assert saved["defenses"]["activation_clustering_tuned"]["options"]["num_dims"] == 2
    assert saved["defenses"]["fine_pruning"]["assumes"]["needs_clean_subset"] is True
    # one progress line per row, in order, then the markdown table and the figure
    assert len(lines) == len(names)
    assert [line.split()[1] for line in lines] == names and lines[0].startswith(f"[1/{len(names)}] none")
    markdown = (out / "leaderboard.md").read_text()
    for name in names:
        assert f"| {name} | {saved['defenses'][name]['clean_accuracy']:.3f} |" in markdown
    assert "(max(0, dASR) - max(0, dC-Acc) + 1) / 2" in markdown and "`none` = the teacher's training" in markdown
    assert "![C-Acc vs. ASR" in markdown
    with Image.open(out / "leaderboard.png") as figure:
        assert figure.format == "PNG" and figure.width > 300
    table = leaderboard_table(saved, markdown=False, assumptions=False)
    assert table.splitlines()[0].split() == ["defense", "C-Acc", "ASR", "R-Acc", "DER", "seconds"]
    assert len(table.splitlines()) == 1 + len(names)


def test_a_rerun_reuses_every_finished_row_and_changed_settings_are_refused_before_work(compared, monkeypatch):
    out = compared["out"]
    lines: list[str] = []
    again = run_compare("badnets", 3, out, defenses=ROWS, report=lines.append, **TINY)
    assert again == compared["board"]
    assert all(line.endswith("(finished earlier)") for line in lines[4:]) and len(lines) == 4 + len(ROWS)
    _no_data(monkeypatch)
    with pytest.raises(ValueError, match="'teacher' made with other settings .num_train_epochs: was 3.0, now 4.0"):
        run_compare("badnets", 3, out, defenses=ROWS, **dict(TINY, num_train_epochs=4))
    from hf_backdoor_guard.defenses import compare as defenses_compare

    monkeypatch.setitem(defenses_compare.EMBEDDED_BENCHMARK_OPTIONS, "activation_clustering", {"num_dims": 3})
    with pytest.raises(ValueError, match=r"'activation_clustering_tuned' made with other settings \(options: was "
                                         r'\{"num_dims": 2\}, now \{"num_dims": 3\}\)'):
        run_compare("badnets", 3, out, defenses=ROWS, **TINY)


def test_every_registered_defense_is_a_row_and_the_tuned_rows_are_separate():
    assert row_names()[:4] == ["none", "student", "student_retaught", "student_cleaned"]
    registered = [name for name in DEFENSES.names() if name != "none"]
    assert row_names()[4:4 + len(registered)] == registered  # the papers' settings: the primary rows
    assert defense_variants()["abl"] == ("abl", {})
    tuned = [name for name in row_names() if name.endswith("_tuned")]
    assert tuned == ["abl_tuned", "activation_clustering_tuned"]
    assert all(defense_variants()[name][1] for name in tuned)


@pytest.mark.parametrize("kwargs, message", [
    ({"attack": "trojan"}, r"Unknown attack 'trojan'; choose from \['badnets', .*'all'\]"),
    ({"defenses": ["nad", "nope"]}, (r"Unknown defense\(s\) \['nope'\]; choose from \['none', 'student', "
                                     r"'student_retaught', 'student_cleaned', 'abl', 'fine_pruning'")),
    ({"defenses": "abl,bogus"}, r"Unknown defense\(s\) \['bogus'\]"),
    ({"seed": -1}, "seed"),
    ({"epochs": 3}, r"unknown option\(s\) \['epochs'\]"),
    ({"train_rows": 5}, "train_rows"),
])
def test_bad_input_is_refused_before_work(tmp_path, monkeypatch, kwargs, message):
    _no_data(monkeypatch)
    out = tmp_path / "x"
    with pytest.raises(ValueError, match=message):
        run_compare(**{"attack": "badnets", "output_dir": out, **kwargs})
    assert not out.exists()


def test_folders_of_users_and_of_other_commands_are_refused(tmp_path, monkeypatch, capsys):
    _no_data(monkeypatch)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and was not written by `compare`"):
        run_compare("badnets", 0, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / MARKER).write_text(json.dumps({"owner": "demo", "outputs": []}))
    with pytest.raises(ValueError, match="written by `demo`, not `compare`"):
        run_compare("all", 0, demo)
    # the command line reports bad input as a message and exit status 2, not a traceback
    assert main(["compare", "--output-dir", str(mine)]) == 2
    assert main(["compare", "--defenses", "nope", "--output-dir", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--attack", "trojan"])
    assert "invalid choice: 'trojan' (choose from badnets" in capsys.readouterr().err.replace("'badnets'", "badnets")
    assert main(["compare", "--list-defenses"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}: clean data:" in listed for name in row_names())


def test_cli_compare_options():
    args = build_parser().parse_args(["compare", "--attack", "all", "--seed", "2", "--output-dir", "d",
                                      "--defenses", "nad", "abl,spectral", "--overwrite", "--reuse-variations", "a",
                                      "b/method"])
    assert (args.attack, args.seed, args.output_dir, args.defenses, args.overwrite, args.reuse_variations) == \
        ("all", 2, "d", ["nad", "abl,spectral"], True, ["a", "b/method"])
    from hf_backdoor_guard.benchmark.compare import chosen_defenses

    assert chosen_defenses(args.defenses) == ["abl", "nad", "spectral"]  # registry order
    assert chosen_defenses(["student", "none"]) == []  # always run, not peer rows


def test_all_attacks_write_one_leaderboard_each_and_one_with_every_attack(tmp_path, monkeypatch):
    from hf_backdoor_guard.benchmark import demo

    monkeypatch.setattr(demo, "attack_names", lambda: ("badnets", "sig"))
    out = tmp_path / "all"
    quick = dict(TINY, max_train_samples=40, max_eval_samples=20, num_train_epochs=1, student_epochs=1)
    board = run_compare("all", 1, out, defenses=["nad"], **quick)
    assert list(board) == ["seed", "attacks"] and list(board["attacks"]) == ["badnets", "sig"]
    assert json.loads((out / "leaderboard.json").read_text()) == board
    for name in ("badnets", "sig"):
        single = json.loads((out / name / "leaderboard.json").read_text())
        assert single == board["attacks"][name] and single["attack"] == name
        assert list(single["defenses"]) == ["none", "student", "student_retaught", "student_cleaned", "nad"]
    markdown = (out / "leaderboard.md").read_text()
    assert "## badnets (seed 1)" in markdown and "## sig (seed 1)" in markdown
    # --overwrite starts over in compare's own folder, keeping a user's file
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(demo, "attack_names", lambda: ("badnets",))
    board = run_compare("all", 2, out, defenses=[], overwrite=True, **quick)
    assert list(board["attacks"]) == ["badnets"] and board["seed"] == 2
    assert list(board["attacks"]["badnets"]["defenses"]) == ["none", "student", "student_retaught",
                                                             "student_cleaned"]
    assert not (out / "sig").exists() and (out / "notes.txt").read_text() == "mine"
