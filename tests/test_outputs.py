"""Output folders: refuse what is not ours, delete only what we recorded, lock against a second run."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hf_backdoor_guard.runtime.outputs import (claim_output_dir, locked, record_outputs, recorded_outputs, remove_outputs,
                                       write_json_atomic)


def test_new_and_empty_folders_are_claimed(tmp_path):
    assert claim_output_dir(tmp_path / "new", "demo").is_dir()
    (tmp_path / "empty").mkdir()
    claim_output_dir(tmp_path / "empty", "demo")
    claim_output_dir(tmp_path / "empty", "demo")  # our own folder again


def test_foreign_files_and_other_jobs_are_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"output_dir .* is not empty and was not written by `demo`.*mine.txt"):
        claim_output_dir(tmp_path, "demo")
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    claim_output_dir(tmp_path / "run", "compare")
    with pytest.raises(ValueError, match="--output-dir .* was written by `compare`, not `defend`"):
        claim_output_dir(tmp_path / "run", "defend", option="--output-dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        claim_output_dir(tmp_path / "file", "demo")


def test_only_recorded_outputs_are_removed(tmp_path):
    folder = claim_output_dir(tmp_path / "run", "publish")
    (folder / "model.safetensors").write_text("ours")
    (folder / "sub").mkdir()
    (folder / "sub" / "x").write_text("ours too")
    record_outputs(folder, ["model.safetensors", "sub"])
    (folder / "notes.md").write_text("the user's")
    assert remove_outputs(folder, ["notes.md", "model.safetensors"]) == ["model.safetensors"]
    assert remove_outputs(folder) == ["sub"]
    assert (folder / "notes.md").read_text() == "the user's"
    assert recorded_outputs(folder) == []  # removed names are forgotten: a user's file may take them later
    (folder / "sub").write_text("the user's, under a name we once wrote")
    assert remove_outputs(folder) == []
    assert (folder / "sub").read_text().startswith("the user's")
    with pytest.raises(ValueError, match="plain names"):
        record_outputs(folder, ["../escape"])


def test_a_marker_being_written_is_not_a_users_file(tmp_path):
    (tmp_path / "..hf-backdoor-guard.json.x1y2.tmp").write_text("{}")  # another rank's atomic write in flight
    claim_output_dir(tmp_path, "variations")


def test_atomic_json_leaves_no_temporary_file_and_a_normal_mode(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "a.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode


_HOLD = """
import sys, time
from hf_backdoor_guard.runtime.outputs import locked
with locked(sys.argv[1], "test run"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_process_is_refused_until_the_first_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"in use by another test run \(process {holder.pid} on "):
            with locked(tmp_path, "test run"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while True:  # the kernel drops the lock with the killed process
        try:
            with locked(tmp_path, "test run"):
                break
        except RuntimeError:
            assert time.time() < deadline
            time.sleep(0.05)
    assert os.path.exists(tmp_path / ".hf-backdoor-guard.lock")
