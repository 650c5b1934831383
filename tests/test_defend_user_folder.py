"""``defend`` on a user's own folder (issue 23): data checked before work, never stale, never a user's file lost.

Every test runs the real command (``cli.main``) on a small digits imagefolder written to
disk, with a quick setting (one teacher epoch, one variation of two steps: ~5 s a run).
Each one reproduces a defect a user hit, and failed before the fix.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from digits_folder import write_digits_imagefolder  # noqa: E402

from hf_backdoor_guard.cli import main  # noqa: E402

QUICK = "num_train_epochs: 1\nvariation_options:\n  num_variations: 1\n  num_inference_steps: 2\n"


@pytest.fixture
def data(tmp_path) -> Path:
    return write_digits_imagefolder(tmp_path / "data", train_rows=60, test_rows=20, poison_rate=0)


@pytest.fixture
def quick(tmp_path) -> Path:
    path = tmp_path / "quick.yaml"
    path.write_text(QUICK)
    return path


def defend(data: Path, out: Path, config: Path, *extra: str) -> int:
    return main(["defend", "--dataset_name", "imagefolder", "--data-dir", str(data), "--model_name_or_path", "small-resnet",
                 "--diffusion-model", "embedded", "--output-dir", str(out), "--config", str(config), *extra])


def rows_of(out: Path) -> int:
    return len(json.loads((out / "detection.json").read_text())["suspicion"])


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. stale data ---------------------------------------------------------------------------
def test_edited_data_is_never_answered_from_the_cache(tmp_path, data, quick, caplog):
    out = tmp_path / "out"
    assert defend(data, out, quick) == 0 and rows_of(out) == 60
    largest = max((data / "train").iterdir(), key=lambda folder: len(list(folder.iterdir())))
    assert largest.name != "7" and len(list(largest.iterdir())) > 6
    for image in sorted(largest.iterdir())[:6]:
        image.unlink()  # the user deletes 6 images ...
    moved = sorted((data / "train" / "7").iterdir())
    for image in moved:  # ... and moves every image of class 7 to class 4
        shutil.move(str(image), str(data / "train" / "4" / image.name))
    (data / "train" / "7" / "keep.png").write_bytes((data / "train" / "4" / moved[0].name).read_bytes())
    caplog.clear()
    assert defend(data, out, quick) == 0
    assert "The data changed since the run" in caplog.text and "every stage runs again" in caplog.text
    assert "train split: 60 rows, now 55" in caplog.text
    # the report is about the data as it is now: 55 rows (one image kept in class 7), the others labelled 4
    assert rows_of(out) == 55
    assert json.loads((out / "metrics.json").read_text())["rows"]["train"] == 55
    from datasets import load_from_disk

    data_stage = load_from_disk(str(out / "stages" / "data"))["train"]
    assert np.bincount(data_stage["label"])[7] == 1
    # an unchanged rerun still reuses every stage
    before = (out / "stages" / "stages.json").read_text()
    caplog.clear()
    assert defend(data, out, quick) == 0
    assert (out / "stages" / "stages.json").read_text() == before and "changed" not in caplog.text


def test_a_fixed_corrupt_file_is_read_again(tmp_path, data, quick, caplog):
    out = tmp_path / "out"
    victim = sorted((data / "train" / "2").iterdir())[0]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated
    assert defend(data, out, quick) == 2
    assert str(victim) in caplog.text and "cannot be read" in caplog.text
    assert not (out / "stages").exists()  # refused before any stage
    victim.write_bytes(good)  # the user fixes it
    assert defend(data, out, quick) == 0 and rows_of(out) == 60


# --- 2 and 3. user files ---------------------------------------------------------------------
def test_user_files_in_every_output_folder_survive_a_rerun_and_overwrite(tmp_path, data, quick):
    out = tmp_path / "out"
    assert defend(data, out, quick) == 0
    mine = {out / "cleaned" / "notes.txt": "cleaned notes", out / "model" / "notes.txt": "model notes",
            out / "stages" / "notes.txt": "stage notes", out / "my-plot.png": "top notes"}
    for path, text in mine.items():
        path.write_text(text)
    assert defend(data, out, quick) == 0  # a plain rerun rewrites cleaned/ and model/
    assert defend(data, out, quick, "--overwrite", "--num-train-epochs", "2") == 0  # starts over
    for path, text in mine.items():
        assert path.read_text() == text, path
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "cleaned"))) == 60 - len(json.loads((out / "detection.json").read_text())
                                                                ["flagged"])
    assert json.loads((out / "stages" / "stages.json").read_text())["teacher"]["settings"]["num_train_epochs"] == 2
    # --overwrite removed every stage output it wrote and kept only the user's file beside the new ones
    stage_names = {p.name for p in (out / "stages").iterdir()}
    assert "notes.txt" in stage_names and "teacher" in stage_names


def test_a_users_file_where_cleaned_writes_is_refused_before_work(tmp_path, data, quick, caplog):
    out = tmp_path / "out"
    assert defend(data, out, quick) == 0
    (out / "cleaned" / "state.json").unlink()
    (out / "cleaned" / "state.json").write_text("mine")  # the same name, now the user's (not recorded: see below)
    from hf_backdoor_guard.runtime.outputs import MARKER

    marker = json.loads((out / MARKER).read_text())
    marker["outputs"].remove("cleaned/state.json")
    (out / MARKER).write_text(json.dumps(marker))
    assert defend(data, out, quick) == 2
    assert "cleaned/state.json" in caplog.text and "yours" in caplog.text
    assert (out / "cleaned" / "state.json").read_text() == "mine"


def _hold_lock(folder: Path, ready: Path) -> subprocess.Popen:
    """A real second process holding the output folder's lock, as a running defend does."""
    code = ("import sys, time, pathlib; from hf_backdoor_guard.runtime.outputs import locked\n"
            "with locked(sys.argv[1], 'defend run'):\n"
            "    pathlib.Path(sys.argv[2]).write_text('held'); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder), str(ready)])
    deadline = time.time() + 180  # a loaded machine starts python slowly
    while not ready.exists():
        assert time.time() < deadline and holder.poll() is None, "the lock holder did not start"
        time.sleep(0.05)
    return holder


def test_overwrite_takes_the_lock_before_removing_anything(tmp_path, data, quick, caplog):
    out = tmp_path / "out"
    assert defend(data, out, quick) == 0
    before = tree(out / "stages")
    holder = _hold_lock(out, tmp_path / "ready")
    try:
        caplog.clear()
        assert defend(data, out, quick, "--overwrite") == 1
    finally:
        holder.kill()
        holder.wait()
    assert "is in use by another defend run" in caplog.text and "Traceback" not in caplog.text
    assert tree(out / "stages") == before  # the running run's files are untouched


# --- 4. rows checked before work ---------------------------------------------------------------
@pytest.mark.parametrize("damage, words", [
    (lambda path: path.write_bytes(b""), "cannot identify image file"),
    (lambda path: path.write_bytes(path.read_bytes()[:60]), "cannot be read"),
    (lambda path: path.write_text("not an image at all"), "cannot identify image file"),
])
def test_unreadable_images_are_named_before_work(tmp_path, data, quick, caplog, damage, words):
    victim = sorted((data / "train" / "3").iterdir())[1]
    damage(victim)
    assert defend(data, tmp_path / "out", quick) == 2
    assert str(victim) in caplog.text and words in caplog.text
    assert not (tmp_path / "out").exists()


def _saved(tmp_path: Path, train_labels, eval_labels, *, none_image_row: int | None = None) -> Path:
    """A save_to_disk DatasetDict of digit images with the labels given (None allowed, plain int column)."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    from hf_backdoor_guard.data import load_digits_dataset

    digits = load_digits_dataset()
    features = Features({"image": Image(), "label": Value("int64")})

    def split(source, labels):
        images = [source[i]["image"] for i in range(len(labels))]
        if none_image_row is not None and source is digits["train"]:
            images[none_image_row] = None
        return Dataset.from_dict({"image": images, "label": list(labels)}, features=features)

    folder = tmp_path / "saved"
    DatasetDict({"train": split(digits["train"], train_labels),
                 "test": split(digits["test"], eval_labels)}).save_to_disk(str(folder))
    return folder


def _defend_saved(folder: Path, out: Path, config: Path) -> int:
    return main(["defend", "--dataset_name", str(folder), "--model_name_or_path", "small-resnet", "--diffusion-model", "embedded",
                 "--output-dir", str(out), "--config", str(config)])


@pytest.mark.parametrize("case, words", [
    ("negative train label", "row 7 of split 'train': label -1"),
    ("None train label", "row 7 of split 'train': label None"),
    ("None image", "row 4 of split 'train': no image"),
    ("eval label above the classes", "row 3 of split 'test': label 12"),
    ("negative eval label", "row 3 of split 'test': label -1"),
])
def test_bad_rows_are_named_before_work(tmp_path, quick, caplog, case, words):
    train, evaluation = [i % 3 for i in range(30)], [i % 3 for i in range(12)]
    none_image = None
    if case == "negative train label":
        train[7] = -1
    elif case == "None train label":
        train[7] = None
    elif case == "None image":
        none_image = 4
    elif case == "eval label above the classes":
        evaluation[3] = 12
    else:
        evaluation[3] = -1  # was silently counted as a miss: a wrong C-Acc
    folder = _saved(tmp_path, train, evaluation, none_image_row=none_image)
    assert _defend_saved(folder, tmp_path / "out", quick) == 2
    assert words in caplog.text
    assert not (tmp_path / "out").exists()


def test_an_evaluation_class_without_training_rows_is_warned_about(tmp_path, quick, caplog):
    # plain int labels: classes 0..3, and class 2 has evaluation rows but no training row
    folder = _saved(tmp_path, [(0, 1, 3)[i % 3] for i in range(30)], [i % 4 for i in range(12)])
    assert _defend_saved(folder, tmp_path / "out", quick) == 0
    assert "Evaluation classes ['2'] have no training rows" in caplog.text and "their 3 evaluation rows" in caplog.text


# --- 5. output folder and data folder apart ---------------------------------------------------
def test_output_folder_inside_the_data_folder_is_refused(tmp_path, data, quick, caplog):
    assert defend(data, data / "runs", quick) == 2
    assert "inside the data folder" in caplog.text and not (data / "runs").exists()
    assert defend(data, tmp_path, quick) == 2
    assert "is inside --output-dir" in caplog.text


# --- 7. an output folder name that is no Hub name ----------------------------------------------
def test_an_output_folder_named_with_a_space_and_an_accent_runs(tmp_path, data, quick):
    out = tmp_path / "mes données"
    assert defend(data, out, quick) == 0
    assert (out / "model" / "model.safetensors").is_file()


# --- 9. no evaluation split ---------------------------------------------------------------------
def test_without_an_evaluation_split_a_stratified_share_is_held_out(tmp_path, quick):
    data = write_digits_imagefolder(tmp_path / "data", train_rows=100, test_rows=20, poison_rate=0)
    shutil.rmtree(data / "test")  # train/ only: defend used to stop and ask for --eval-split
    out = tmp_path / "out"
    assert defend(data, out, quick) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"]["train"] == 85 and metrics["rows"]["test"] == 15  # 15%, as transformers' examples
    assert "15 rows (15%) held out of 'train', stratified by class, seed 0" in (out / "report.md").read_text()
    # seeded, stratified, disjoint; detection.json names rows as the input split numbers them
    from datasets import load_dataset

    from hf_backdoor_guard.data import held_out_rows

    full = load_dataset("imagefolder", data_dir=str(data), split="train")
    kept, held_out, stratified = held_out_rows(full, 0.15, 0)
    assert stratified and np.array_equal(held_out, held_out_rows(full, 0.15, 0)[1])
    assert len(set(np.asarray(full["label"])[held_out])) == 10 and not set(kept) & set(held_out)
    detection = json.loads((out / "detection.json").read_text())
    assert detection["rows"] == kept.tolist() and len(detection["suspicion"]) == 85
    assert set(detection["flagged"]) <= set(kept.tolist())


# --- faults: a defend killed at random points ends as an uninterrupted one ----------------------
def _run_child(data: str, out: str, config: str) -> None:
    import torch

    torch.set_num_threads(1)
    os._exit(defend(Path(data), Path(out), Path(config), "--num-train-epochs", "3"))


def test_a_defend_killed_at_random_points_ends_as_an_uninterrupted_run(tmp_path, data, quick):
    reference = tmp_path / "reference"
    started = time.perf_counter()
    assert defend(data, reference, quick, "--num-train-epochs", "3") == 0
    duration = time.perf_counter() - started
    out = tmp_path / "out"
    context = multiprocessing.get_context("fork")
    rng = np.random.default_rng(23)
    kills = 0
    for delay in rng.uniform(0.1, 0.9, size=4) * duration:
        child = context.Process(target=_run_child, args=(str(data), str(out), str(quick)))
        child.start()
        child.join(delay)
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.join()
    assert kills >= 2
    assert defend(data, out, quick, "--num-train-epochs", "3") == 0
    detection, expected = (json.loads((folder / "detection.json").read_text()) for folder in (out, reference))
    assert detection["flagged"] == expected["flagged"]
    assert detection["suspicion"] == pytest.approx(expected["suspicion"], abs=1e-5)
    got, want = (json.loads((folder / "metrics.json").read_text())["models"] for folder in (out, reference))
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name]), name
    assert tree(out / "cleaned").keys() == tree(reference / "cleaned").keys()


# --- compare and the demo keep the same promises -----------------------------------------------
def test_compare_overwrite_waits_for_the_lock_and_keeps_user_files(tmp_path, caplog):
    from hf_backdoor_guard.benchmark.compare import run_compare

    tiny = dict(max_train_samples=120, max_eval_samples=40, num_train_epochs=1, student_epochs=1,
                variation_options={"num_inference_steps": 2, "num_variations": 1})
    out = tmp_path / "compare"
    run_compare("badnets", 0, out, defenses=["fine_pruning"], **tiny)
    (out / "defenses" / "notes.txt").write_text("mine")
    (out / "method" / "stages" / "notes.txt").write_text("mine too")
    before = tree(out / "defenses")
    holder = _hold_lock(out, tmp_path / "ready")
    try:
        assert main(["compare", "--output-dir", str(out), "--defenses", "fine_pruning", "--overwrite"]) == 1
    finally:
        holder.kill()
        holder.wait()
    assert "is in use by another" in caplog.text and tree(out / "defenses") == before
    run_compare("badnets", 0, out, defenses=["fine_pruning"], overwrite=True, **{**tiny, "num_train_epochs": 2})
    assert (out / "defenses" / "notes.txt").read_text() == "mine"
    assert (out / "method" / "stages" / "notes.txt").read_text() == "mine too"
    teacher = json.loads((out / "method" / "stages" / "stages.json").read_text())["teacher"]
    assert teacher["settings"]["num_train_epochs"] == 2


# --- 6. one line, not a traceback -------------------------------------------------------------
def test_a_folder_in_use_is_one_line_and_exit_1_with_the_traceback_only_under_debug(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock(out, tmp_path / "ready")
    command = [sys.executable, "-m", "hf_backdoor_guard.cli", "defend", "--dataset_name", "imagefolder", "--data-dir",
               str(data), "--model_name_or_path", "small-resnet", "--diffusion-model", "embedded", "--output-dir", str(out),
               "--num-train-epochs", "1"]
    try:
        plain = subprocess.run(command, capture_output=True, text=True, timeout=600)
        debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, timeout=600)
    finally:
        holder.kill()
        holder.wait()
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    errors = [line for line in plain.stderr.splitlines() if line.startswith("backdoor-guard defend:")]
    assert len(errors) == 1 and "is in use by another defend run" in errors[0]
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "RuntimeError" in debug.stderr
