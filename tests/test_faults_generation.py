"""Fault injection: a real generation process is SIGKILLed, then the rerun must equal an uninterrupted run.

The kills come from the test's own child process (``generation_child.py``, forked), at
points it reaches through its own hooks: at the start of a denoising call (mid-shard,
with the writer thread busy on the previous batch) and between a shard file's rename
and its manifest. SIGKILL gives the process no chance to clean up, as a crash or an
out-of-memory kill would not.
"""

import signal
from pathlib import Path

import generation_child
import pytest
from datasets import load_from_disk
from test_variations_generate import OPTIONS, ddim_variation, make_ds, rows
from tiny_pipelines import saved_family

import hf_backdoor_guard as hbg

CALL = dict(batch_size=2, shard_size=4)
# Written afresh by every run (timestamps, process ids), so not compared byte for byte.
RUN_FILES = {".hf-backdoor-guard.json", ".hf-backdoor-guard.lock", ".hf-backdoor-guard.lock.holder",
             "variations_manifest.json"}


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.name not in RUN_FILES}


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("input") / "ds"
    make_ds().save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def reference(ds_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("reference") / "variations"
    result = hbg.generate_variations(load_from_disk(str(ds_dir)), ddim_variation(), out_dir, progress=False, **CALL)
    return folder_bytes(out_dir), rows(result)


def killed_run(ds_dir, out_dir, **hook):
    child = generation_child.start(ds_dir, out_dir, {"pipeline": str(saved_family("ddim")[0]), "variation": OPTIONS,
                                                     "call": CALL, **hook})
    child.join(240)
    assert child.exitcode == -signal.SIGKILL, f"the child process ended with {child.exitcode}"


def rerun(ds_dir, out_dir):
    result = hbg.generate_variations(load_from_disk(str(ds_dir)), ddim_variation(), out_dir, progress=False, **CALL)
    return folder_bytes(out_dir), rows(result)


def test_kill_mid_shard_then_rerun_equals_an_uninterrupted_run(ds_dir, reference, tmp_path):
    out_dir = tmp_path / "variations"
    # At shard 1's second batch; the writer thread may still be finishing shard 0 (queued before the kill).
    killed_run(ds_dir, out_dir, kill_at_call=3)
    assert not (out_dir / "data-00001.json").exists()
    assert rerun(ds_dir, out_dir) == reference
    assert not list(out_dir.glob(".*partial"))


def test_kill_between_a_shard_and_its_manifest_then_rerun_equals_an_uninterrupted_run(ds_dir, reference, tmp_path,
                                                                                       caplog):
    out_dir = tmp_path / "variations"
    killed_run(ds_dir, out_dir, kill_before_manifest=1)
    assert (out_dir / "data-00001.arrow").is_file() and not (out_dir / "data-00001.json").exists()
    with caplog.at_level("WARNING", logger="hf_backdoor_guard"):
        assert rerun(ds_dir, out_dir) == reference
    assert "data-00001.arrow is not trusted, redoing it: it has no manifest" in caplog.text
