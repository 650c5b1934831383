"""generate_variations(reuse=...): rows whose image did not change take an earlier folder's variations."""

import shutil

import pytest
from datasets import Dataset
from PIL import Image
from test_variations_generate import clean_run, count_calls, ddim_variation, ds, rows  # noqa: F401 (fixtures)

import hf_backdoor_guard as hbg
from hf_backdoor_guard.pipeline.config import DefendConfig

RUN = dict(batch_size=2, shard_size=4)  # as clean_run made the donor


@pytest.fixture(scope="module")
def donor(clean_run):
    return clean_run[0]


def changed(ds, images=(), labels=()):
    """``ds`` with a white image at the rows ``images`` and the label moved on at the rows ``labels``."""
    new_images = [Image.new("RGB", (32, 32), "white") if i in images else image for i, image in enumerate(ds["image"])]
    new_labels = [(label + 1) % 3 if i in labels else label for i, label in enumerate(ds["label"])]
    return Dataset.from_dict({"image": new_images, "label": new_labels}, features=ds.features)


def test_unchanged_rows_are_taken_and_the_result_is_the_bytes_of_a_fresh_run(ds, donor, tmp_path):
    # Like a second attack on the same victim set: two images replaced, one label flipped.
    poisoned = changed(ds, images=(1, 6), labels=(3,))
    fresh = hbg.generate_variations(poisoned, ddim_variation(), tmp_path / "fresh", **RUN)
    variation = ddim_variation()
    calls = count_calls(variation)
    reused = hbg.generate_variations(poisoned, variation, tmp_path / "reused", reuse=[(ds, donor)], **RUN)
    assert rows(reused) == rows(fresh)
    assert sum(calls) == 2 * 2  # only rows 1 and 6 went through the model, two variations each
    assert [r["label"] for r in reused.select(range(6, 8))] == [(ds[3]["label"] + 1) % 3] * 2  # this run's labels
    # the folder is an ordinary finished one: it resumes as done and can itself be reused
    again = ddim_variation()
    calls = count_calls(again)
    hbg.generate_variations(ds, again, tmp_path / "back", reuse=[(poisoned, tmp_path / "reused"), (ds, donor)], **RUN)
    assert calls == []  # rows 1 and 6 come from the second donor


def test_bad_donors_are_refused_before_any_work(ds, donor, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"made with other settings \(differing: \['variation', 'variation_settings'"):
        hbg.generate_variations(ds, ddim_variation(num_variations=3), out, reuse=[(ds, donor)], **RUN)
    with pytest.raises(ValueError, match="are not the rows it was made from \\(rows 4-7 differ from its shard 1\\)"):
        hbg.generate_variations(ds, ddim_variation(), out, reuse=[(changed(ds, images=(5,)), donor)], **RUN)
    with pytest.raises(ValueError, match="are not the rows it was made from"):  # a label is an input too
        hbg.generate_variations(ds, ddim_variation(), out, reuse=[(changed(ds, labels=(0,)), donor)], **RUN)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(donor, unfinished)
    (unfinished / "variations_manifest.json").write_text('{"settings": {}}')
    with pytest.raises(ValueError, match="is not a finished generate_variations folder"):
        hbg.generate_variations(ds, ddim_variation(), out, reuse=[(ds, unfinished)], **RUN)
    damaged = tmp_path / "damaged"
    shutil.copytree(donor, damaged)
    shard = damaged / "data-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"data-00001.arrow cannot be trusted \(it holds \d+ bytes, its manifest says"):
        hbg.generate_variations(ds, ddim_variation(), out, reuse=[(ds, damaged)], **RUN)
    with pytest.raises(ValueError, match="must be a pair"):
        hbg.generate_variations(ds, ddim_variation(), out, reuse=[donor], **RUN)
    with pytest.raises(ValueError, match="reuse needs a datasets.Dataset input"):
        hbg.generate_variations(ds.to_iterable_dataset(), ddim_variation(), out, reuse=[(ds, donor)], **RUN)
    assert not out.exists()


def test_defend_names_a_folder_without_variations(tmp_path):
    with pytest.raises(ValueError, match=r"reuse_variations: .*nothing is not the output folder of an earlier run "
                                         "with finished variations"):
        DefendConfig(reuse_variations=[str(tmp_path / "nothing")])
    with pytest.raises(ValueError, match="reuse_variations must be a list of folders"):
        DefendConfig(reuse_variations=str(tmp_path))
