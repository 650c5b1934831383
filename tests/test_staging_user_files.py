"""A user's files inside the folders a publish stages, and a user's own columns in a published dataset.

Publishes write real files with real ``datasets`` objects. No offline server accepts
uploads, so only the upload is faked: ``FakeHfApi`` stands in for
``huggingface_hub.HfApi`` in ``hub`` and records which files ``upload_folder`` would
send (through huggingface_hub's own pattern filter), or fails like an unreachable Hub.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset
from huggingface_hub.utils import filter_repo_objects
from PIL import Image as PILImage

import hf_backdoor_guard as hbg
from hf_backdoor_guard.hub import publish as hub
from hf_backdoor_guard.hub import staging
from hf_backdoor_guard.runtime.outputs import LOCK, MARKER, read_marker, recorded_outputs, write_json_atomic

SHARD = "data/train-00000-of-00001.parquet"


def images_dataset(rows: int = 4, seed: int = 0, **extra_columns) -> Dataset:
    """``image`` + ``label`` (3 classes) and any extra ``name=(feature, values)`` columns."""
    rng = np.random.default_rng(seed)
    data = {"image": [PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(rows)],
            "label": [i % 3 for i in range(rows)]}
    features = {"image": Image(), "label": ClassLabel(names=["cat", "dog", "frog"])}
    for name, (feature, values) in extra_columns.items():
        data[name], features[name] = values, feature
    return Dataset.from_dict(data, features=Features(features))


class FakeHfApi:
    """Fakes only the upload (nothing offline accepts one): records the files upload_folder would send."""

    uploads: list = []
    fail_with: Exception | None = None

    def __init__(self, token=None, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        return f"https://hub.invalid/{repo_id}"

    def upload_folder(self, *, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        if self.fail_with is not None:
            raise self.fail_with
        root = Path(folder_path)
        self.uploads.append(sorted(filter_repo_objects(
            (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
            allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
        )))


@pytest.fixture
def fake_api(monkeypatch):
    api = type("FakeHfApiForTest", (FakeHfApi,), {"uploads": [], "fail_with": None})
    monkeypatch.setattr(hub, "HfApi", api)
    return api


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` and its bytes, apart from the lock files (whose holder names a process)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(LOCK)}


# ============================================================== defect 1: files a user adds under data/


def test_a_users_file_in_the_data_folder_survives_a_republish_and_is_not_uploaded(fake_api, tmp_path):
    out = tmp_path / "ds"
    # Two shards (one a row) first, so the republish (one shard per split) has stale files of ours to remove.
    hub.publish_dataset(images_dataset(2), "hbg/x", output_dir=out, push=False, max_shard_size=1)
    assert sorted(recorded_outputs(out)) == ["README.md", "data/train-00000-of-00002.parquet",
                                             "data/train-00001-of-00002.parquet"]
    (out / "data" / "notes.txt").write_text("my notes")

    hub.publish_dataset(DatasetDict(train=images_dataset(4), test=images_dataset(2, seed=1)), "hbg/x",
                        output_dir=out)
    assert (out / "data" / "notes.txt").read_text() == "my notes"
    want = ["README.md", "data/test-00000-of-00001.parquet", SHARD]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "data").iterdir()) == [
        "data/notes.txt", "data/test-00000-of-00001.parquet", SHARD]
    assert sorted(recorded_outputs(out)) == want  # recorded file by file, the user's file not among them
    assert hub.staged_files(out) == want
    assert fake_api.uploads == [want]


def test_a_failed_upload_never_offers_a_users_file_for_the_retry(fake_api, tmp_path):
    out = tmp_path / "ds"
    fake_api.fail_with = ConnectionError("hub unreachable")
    with pytest.raises(hub.PublishError) as info:
        hub.publish_dataset(images_dataset(4), "hbg/x", output_dir=out)
    assert info.value.staged_files == ["README.md", SHARD]
    (out / "data" / "notes.txt").write_text("my notes")  # added while the Hub is down
    assert hub.staged_files(out) == ["README.md", SHARD]

    with pytest.raises(hub.PublishError) as info:
        hub.publish_dataset(images_dataset(4), "hbg/x", output_dir=out)
    assert info.value.staged_files == ["README.md", SHARD]
    assert f"allow_patterns={['README.md', SHARD]!r}" in str(info.value) and "notes.txt" not in str(info.value)
    assert (out / "data" / "notes.txt").read_text() == "my notes"


def test_a_users_file_where_a_shard_would_go_is_refused_before_anything_changes(tmp_path):
    out = tmp_path / "ds"
    hub.publish_dataset(images_dataset(4), "hbg/x", output_dir=out, push=False)
    (out / "data" / "test-00000-of-00001.parquet").write_bytes(b"the user's own shard")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds \['data/test-00000-of-00001.parquet'\].*Nothing was changed"):
        hub.publish_dataset(DatasetDict(train=images_dataset(4), test=images_dataset(2, seed=1)), "hbg/x",
                            output_dir=out, push=False)
    assert snapshot(out) == before

    # The same file appearing while the publish writes is refused by the staging step itself.
    def write(scratch: Path) -> None:
        (scratch / "data").mkdir()
        (scratch / "data" / "notes.txt").write_text("ours")
        (out / "data" / "notes.txt").write_text("the user's")

    with pytest.raises(ValueError, match=r"holds \['data/notes.txt'\]"):
        staging.stage(out, "dataset", write)
    assert (out / "data" / "notes.txt").read_text() == "the user's"
    assert snapshot(out) == {**before, "data/notes.txt": b"the user's"}
    assert not (out / staging.SCRATCH).exists()


def test_a_users_file_where_the_data_folder_would_go_is_refused(tmp_path):
    out = tmp_path / "proj"
    staging.stage(out, "model", lambda scratch: (scratch / "README.md").write_text("# card"))
    (out / "data").write_text("the user's")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds \['data'\]"):
        hub.publish_dataset(images_dataset(4), "hbg/x", output_dir=out, push=False)

    def write(scratch: Path) -> None:  # the check inside stage, for a file that appears mid-publish
        (scratch / "data").mkdir()
        (scratch / "data" / "a.parquet").write_bytes(b"ours")

    with pytest.raises(ValueError, match=r"holds \['data'\]"):
        staging.stage(out, "dataset", write)
    assert snapshot(out) == before


def test_an_old_marker_recording_the_data_folder_whole_is_honoured_once_then_file_by_file(fake_api, tmp_path):
    out = tmp_path / "ds"
    hub.publish_dataset(images_dataset(4), "hbg/x", output_dir=out, push=False)
    # What the earlier version of staging recorded: the top-level names, data/ as a whole.
    write_json_atomic(out / MARKER, {**read_marker(out), "outputs": ["README.md", "data"]})
    (out / "data" / "old.txt").write_text("was inside a folder recorded whole")
    assert SHARD in hub.staged_files(out)  # retrying an old staging still uploads its data

    hub.publish_dataset(images_dataset(4), "hbg/x", output_dir=out, push=False)
    assert not (out / "data" / "old.txt").exists()  # the old rule: that folder was ours whole
    assert sorted(recorded_outputs(out)) == ["README.md", SHARD]

    (out / "data" / "notes.txt").write_text("my notes")
    hub.publish_dataset(images_dataset(4), "hbg/x", output_dir=out)
    assert (out / "data" / "notes.txt").read_text() == "my notes"
    assert fake_api.uploads == [["README.md", SHARD]]


class Killed(BaseException):
    """Stands in for a kill: nothing in the library catches it."""


def test_a_publish_that_dies_mid_move_is_redone_exactly_and_keeps_the_users_files(monkeypatch, tmp_path):
    ds = DatasetDict(train=images_dataset(4), test=images_dataset(2, seed=1))
    out = tmp_path / "ds"
    hub.publish_dataset(images_dataset(6, seed=2), "hbg/x", output_dir=out, push=False, max_shard_size=1)
    (out / "data" / "notes.txt").write_text("my notes")

    real_replace, moved = os.replace, []

    def replace(src, dst, **kwargs):  # die after the first file moved out of the scratch folder
        if staging.SCRATCH in Path(src).parts and moved:
            raise Killed()
        real_replace(src, dst, **kwargs)
        if staging.SCRATCH in Path(src).parts:
            moved.append(dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        hub.publish_dataset(ds, "hbg/x", output_dir=out, push=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(moved) == 1 and (out / "data" / "notes.txt").read_text() == "my notes"

    hub.publish_dataset(ds, "hbg/x", output_dir=out, push=False)
    reference = hub.publish_dataset(ds, "hbg/x", output_dir=tmp_path / "uninterrupted", push=False)
    got, want = snapshot(out), snapshot(reference)
    assert got.pop("data/notes.txt") == b"my notes"
    got.pop(MARKER), want.pop(MARKER)
    assert got == want  # nothing left of the first publish or of the dead one
    assert sorted(recorded_outputs(out)) == sorted(recorded_outputs(reference))


# ============================================================== defect 2: a user's own `original_label` / `cover`


def test_a_users_own_original_label_and_cover_columns_are_published(tmp_path, caplog):
    ds = images_dataset(4, original_label=(Value("string"), ["scan", "photo", "scan", "photo"]),
                        cover=(Value("bool"), [True, False, False, True]))
    with caplog.at_level(logging.INFO, logger="hf_backdoor_guard"):
        staged = hub.publish_dataset(ds, "hbg/mine", output_dir=tmp_path / "ds", push=False)
    reloaded = load_dataset(str(staged), split="train")
    assert reloaded.column_names == ["image", "label", "original_label", "cover"]
    assert list(reloaded["original_label"]) == list(ds["original_label"])
    assert list(reloaded["cover"]) == list(ds["cover"])
    assert "Leaving out" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    text = (staged / "README.md").read_text()
    assert "Left out on purpose" not in text and "Kept on request" not in text


def test_the_ground_truth_of_a_research_dataset_is_left_out_with_a_warning(tmp_path, caplog):
    plain = images_dataset(12)
    train = hbg.poison_dataset(plain, hbg.BadNets(), target_label=0, rate=0.25, seed=1)
    test = hbg.triggered_testset(images_dataset(6, seed=3), hbg.BadNets(), target_label=0)
    assert "poisoned" in train.column_names and "original_label" in test.column_names
    with caplog.at_level(logging.INFO, logger="hf_backdoor_guard"):
        staged = hub.publish_dataset(DatasetDict(train=train, test=test), "hbg/research", output_dir=tmp_path / "ds",
                                     push=False)
    assert load_dataset(str(staged), split="train").column_names == ["image", "label"]
    assert load_dataset(str(staged), split="test").column_names == ["image", "label"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "['cover', 'original_label', 'poisoned']" in warnings[0] and "keep_poisoning_columns=True" in warnings[0]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_backdoor_guard"):
        staged = hub.publish_dataset(train, "hbg/research", output_dir=tmp_path / "kept", push=False,
                                     keep_poisoning_columns=True)
    assert load_dataset(str(staged), split="train").column_names == train.column_names
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
