"""generate_variations: shards on disk, resume after an interruption, two processes, refusal to mix."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, load_from_disk
from PIL import Image

import hf_backdoor_guard as hbg
from tiny_pipelines import saved_family

OPTIONS = dict(size=32, num_inference_steps=4, strength=0.5, eta=1.0, num_variations=2)


def ddim_variation(**options):
    path, _ = saved_family("ddim")
    return hbg.ImageVariation.from_pretrained(path, **{**OPTIONS, **options})


def make_ds(n=10):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["cat", "dog", "emu"])})
    return Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)


def rows(ds):
    """Comparable content of a dataset: pixels as bytes, other columns as they are."""
    return [{k: (v.tobytes() if isinstance(v, Image.Image) else v) for k, v in row.items()} for row in ds]


def count_calls(variation, fail_after=None):
    """Wrap the adapter so calls are counted (and the run dies like a Ctrl-C after ``fail_after`` calls)."""
    calls = []
    original = variation.adapter.generate

    def generate(images, generators, settings):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt
        calls.append(len(images))
        return original(images, generators, settings)

    variation.adapter.generate = generate
    return calls


@pytest.fixture(scope="module")
def ds():
    return make_ds()


@pytest.fixture(scope="module")
def clean_run(ds, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("clean") / "variations"
    return out_dir, hbg.generate_variations(ds, ddim_variation(), out_dir, batch_size=2, shard_size=4)


def test_result_equals_dataset_map_and_reloads_from_disk(ds, clean_run):
    out_dir, result = clean_run
    mapped = ds.map(ddim_variation(), batched=True, batch_size=2, with_indices=True)
    assert len(result) == 20 and result.column_names == mapped.column_names
    assert rows(result) == rows(mapped)
    assert sorted(p.name for p in out_dir.glob("*.arrow")) == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    reloaded = load_from_disk(str(out_dir))
    assert rows(reloaded) == rows(result)
    assert reloaded.features["label"].names == ["cat", "dog", "emu"] == result.features["label"].names
    assert len(ds) == 10 and "source_index" not in ds.column_names  # input untouched


def test_resume_after_interruption_skips_finished_shards(ds, clean_run, tmp_path):
    out_dir = tmp_path / "variations"
    interrupted = ddim_variation()
    calls = count_calls(interrupted, fail_after=4)  # shards hold 2 batches: dies inside shard 3
    with pytest.raises(KeyboardInterrupt):
        hbg.generate_variations(ds, interrupted, out_dir, batch_size=2, shard_size=4)
    finished = sorted(out_dir.glob("data-*.arrow"))
    assert [p.name for p in finished] == ["data-00000-of-00003.arrow", "data-00001-of-00003.arrow"]
    assert not (out_dir / "state.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    resumed = ddim_variation()
    calls = count_calls(resumed)
    result = hbg.generate_variations(ds, resumed, out_dir, batch_size=2, shard_size=4)
    assert calls == [4]  # only the last shard's single batch of 2 rows x 2 variations
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert rows(result) == rows(clean_run[1])
    assert not list(out_dir.glob(".*partial"))

    again = ddim_variation()
    calls = count_calls(again)
    assert rows(hbg.generate_variations(ds, again, out_dir, batch_size=2, shard_size=4)) == rows(result)
    assert calls == []


def test_other_settings_refuse_to_mix(ds, clean_run, tmp_path):
    out_dir, _ = clean_run
    for variation, shard_size in ((ddim_variation(seed=1), 4), (ddim_variation(), 5)):
        with pytest.raises(ValueError, match=f"output_dir {out_dir} holds variations made with other settings"):
            hbg.generate_variations(ds, variation, out_dir, batch_size=2, shard_size=shard_size)
    with pytest.raises(ValueError, match="other settings"):
        hbg.generate_variations(ds.select(range(8)), ddim_variation(), out_dir, batch_size=2, shard_size=4)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"not empty \(holds \[.notes.txt.\]...\) and was not written by generate_variations"):
        hbg.generate_variations(ds, ddim_variation(), foreign, batch_size=2)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_bad_arguments_fail_before_any_work(ds, tmp_path):
    variation = ddim_variation()
    calls = count_calls(variation)
    with pytest.raises(ValueError, match="Image column 'image' not found"):
        hbg.generate_variations(ds.rename_column("image", "img"), variation, tmp_path / "a")
    with pytest.raises(ValueError, match="batch_size"):
        hbg.generate_variations(ds, variation, tmp_path / "b", batch_size=0)
    with pytest.raises(ValueError, match="shard_size"):
        hbg.generate_variations(ds, variation, tmp_path / "c", shard_size=0)
    with pytest.raises(ValueError, match="must be an ImageVariation"):
        hbg.generate_variations(ds, lambda batch: batch, tmp_path / "d")
    assert calls == [] and not any((tmp_path / name).exists() for name in "abcd")


def test_progress_bar_reports_images_per_second(ds, tmp_path, capsys):
    hbg.generate_variations(ds.select(range(4)), ddim_variation(), tmp_path / "v", batch_size=2)
    err = capsys.readouterr().err
    assert "Image variations" in err and "img/s" in err and "8/8" in err


def _two_process_worker(ds_dir, out_dir, log_dir):
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    torch.set_num_threads(1)
    PartialState._reset_state()  # a forked worker inherits the pytest process's accelerate singleton, if any
    variation = ddim_variation()
    calls = count_calls(variation)
    result = hbg.generate_variations(load_from_disk(ds_dir), variation, out_dir, batch_size=2, shard_size=4,
                                     progress=False)
    Path(log_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps(
        {"num_processes": dist.get_world_size(), "calls": calls, "rows": len(result)}))


def test_two_processes_split_shards_and_match_one_process(ds, clean_run, tmp_path):
    from accelerate import debug_launcher

    ds_dir = str(tmp_path / "input")
    ds.save_to_disk(ds_dir)
    out_dir, log_dir = str(tmp_path / "variations"), tmp_path / "logs"
    log_dir.mkdir()
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}
    debug_launcher(_two_process_worker, args=(ds_dir, out_dir, str(log_dir)), num_processes=2)
    assert env == {k: os.environ.get(k) for k in env}
    logs = [json.loads((log_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [log["num_processes"] for log in logs] == [2, 2]
    # 3 shards of 4 rows round-robin: rank 0 has shards 0 and 2 (2 + 1 batches), rank 1 shard 1 (2 batches)
    assert [log["calls"] for log in logs] == [[4, 4, 4], [4, 4]]
    assert [log["rows"] for log in logs] == [20, 20]
    assert rows(load_from_disk(out_dir)) == rows(clean_run[1])


TORCHRUN_WORKER = """
import logging
import sys
import torch
logging.basicConfig(level=logging.INFO, format="%(process)d %(message)s")
torch.set_num_threads(1)
from datasets import load_from_disk
import hf_backdoor_guard as hbg
ds_dir, pipeline_dir, out_dir = sys.argv[1:4]
variation = hbg.ImageVariation.from_pretrained(pipeline_dir, **{options})
hbg.generate_variations(load_from_disk(ds_dir), variation, out_dir, batch_size=2, shard_size=4, progress=False)
"""


def test_torchrun_two_processes_without_gpus(ds, clean_run, tmp_path):
    # Under torchrun on a GPU-less machine accelerate's PartialState starts the process group but
    # reports one process; generate_variations must still split the shards (not write each twice).
    import subprocess
    import sys

    ds_dir, out_dir = tmp_path / "input", tmp_path / "variations"
    ds.save_to_disk(str(ds_dir))
    script = tmp_path / "worker.py"
    script.write_text(TORCHRUN_WORKER.format(options=OPTIONS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(hbg.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(ds_dir), str(saved_family("ddim")[0]), str(out_dir)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    written = [line.split(" ", 1) for line in done.stderr.splitlines() if " written in " in line]
    assert sorted(message.split(" (")[0] for _, message in written) == ["Shard 1/3", "Shard 2/3", "Shard 3/3"]
    assert len({pid for pid, _ in written}) == 2  # both processes worked, no shard twice
    assert rows(load_from_disk(str(out_dir))) == rows(clean_run[1])
