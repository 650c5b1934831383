"""generate_variations: shards on disk, resume after an interruption, two processes, refusal to mix."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image
from tiny_pipelines import saved_family

import hf_backdoor_guard as hbg

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
    assert sorted(p.name for p in out_dir.glob("*.arrow")) == [f"data-0000{i}.arrow" for i in range(3)]
    assert sorted(p.name for p in out_dir.glob("data-*.json")) == [f"data-0000{i}.json" for i in range(3)]
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
    assert [p.name for p in finished] == ["data-00000.arrow", "data-00001.arrow"]
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
    with pytest.raises(ValueError, match=r"is not empty and was not written by `generate_variations` "
                                         r"\(1 entries, e.g. \['notes.txt'\]\)"):
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
    with pytest.raises(ValueError, match=r"part_index must be an int in \[0, 1\], got 2"):
        hbg.generate_variations(ds, variation, tmp_path / "e", part_index=2, num_parts=2)
    with pytest.raises(ValueError, match="Part 3 of 4 has no shards: the input's 10 rows make 3 shards of 4 rows"):
        hbg.generate_variations(ds, variation, tmp_path / "f", shard_size=4, part_index=3, num_parts=4)
    assert calls == [] and not any((tmp_path / name).exists() for name in "abcdef")


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


def _unshared_folder_worker(ds_dir, base, log_dir):
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState._reset_state()
    rank = dist.get_rank()
    try:  # each rank sees a folder of its own, as two machines would with node-local disks
        hbg.generate_variations(load_from_disk(ds_dir), ddim_variation(), Path(base, f"rank{rank}"), batch_size=2,
                                progress=False)
        outcome = "no error"
    except ValueError as error:
        outcome = str(error)
    Path(log_dir, f"rank{rank}.txt").write_text(outcome)


def test_processes_that_do_not_share_the_folder_stop_together_with_a_clear_error(ds, tmp_path):
    from accelerate import debug_launcher

    ds_dir, log_dir = str(tmp_path / "input"), tmp_path / "logs"
    ds.save_to_disk(ds_dir)
    log_dir.mkdir()
    debug_launcher(_unshared_folder_worker, args=(ds_dir, str(tmp_path), str(log_dir)), num_processes=2)
    for rank in (0, 1):
        outcome = (log_dir / f"rank{rank}.txt").read_text()
        assert "is not on storage shared by all processes" in outcome and "part_index=i, num_parts=n" in outcome
    assert not list(tmp_path.glob("rank*/data-*"))  # no work was done


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
torch.distributed.destroy_process_group()  # as a launched script should: gloo aborts at exit now and then without it
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
    assert sorted(message.split(" (")[0] for _, message in written) == ["Shard 0", "Shard 1", "Shard 2"]
    assert len({pid for pid, _ in written}) == 2  # both processes worked, no shard twice
    assert rows(load_from_disk(str(out_dir))) == rows(clean_run[1])


# ============================================================== resume trusts only verified shards (issue 16.3)


def shard_files(out_dir):
    return sorted(Path(out_dir).glob("data-*.arrow"))


def copy_run(clean_run, tmp_path):
    import shutil

    out_dir = tmp_path / "variations"
    shutil.copytree(clean_run[0], out_dir)
    return out_dir


def keep_first_record_batch(path):
    """Rewrite an Arrow stream file with only its first record batch: a valid file, cut at a batch boundary."""
    import pyarrow as pa

    reader = pa.ipc.open_stream(pa.py_buffer(Path(path).read_bytes()))  # in memory: the file is rewritten below
    schema, first = reader.schema, reader.read_next_batch()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(first)


def test_resume_redoes_a_shard_truncated_at_a_record_batch_boundary(ds, clean_run, tmp_path, caplog):
    out_dir = copy_run(clean_run, tmp_path)
    damaged = shard_files(out_dir)[1]
    keep_first_record_batch(damaged)
    variation = ddim_variation()
    calls = count_calls(variation)
    with caplog.at_level("WARNING", logger="hf_backdoor_guard"):
        result = hbg.generate_variations(ds, variation, out_dir, batch_size=2, shard_size=4)
    assert rows(result) == rows(clean_run[1])  # the old code returned 16 rows for 20, silently
    assert calls == [4, 4]  # shard 1 (2 batches) was redone, nothing else
    assert damaged.name in caplog.text and "redoing" in caplog.text


def test_resume_redoes_a_shard_copied_over_another(ds, clean_run, tmp_path, caplog):
    import shutil

    out_dir = copy_run(clean_run, tmp_path)
    first, second = shard_files(out_dir)[:2]
    shutil.copyfile(first, second)
    with caplog.at_level("WARNING", logger="hf_backdoor_guard"):
        result = hbg.generate_variations(ds, ddim_variation(), out_dir, batch_size=2, shard_size=4)
    assert list(result["source_index"]) == [row for row in range(10) for _ in range(2)]
    assert rows(result) == rows(clean_run[1])
    assert second.name in caplog.text


def test_resume_redoes_a_shard_cut_in_the_middle(ds, clean_run, tmp_path, caplog):
    out_dir = copy_run(clean_run, tmp_path)
    damaged = shard_files(out_dir)[1]
    data = damaged.read_bytes()
    damaged.write_bytes(data[:len(data) // 2])
    with caplog.at_level("WARNING", logger="hf_backdoor_guard"):
        result = hbg.generate_variations(ds, ddim_variation(), out_dir, batch_size=2, shard_size=4)
    assert rows(result) == rows(clean_run[1])  # the old code died with a raw Arrow OSError naming no file
    assert damaged.name in caplog.text


# ============================================================== one run per folder (issue 16.8)

def start_child(ds_dir, out_dir, **options):
    """A real second process (forked) running generate_variations; see generation_child.py."""
    import generation_child

    return generation_child.start(ds_dir, out_dir, {"pipeline": str(saved_family("ddim")[0]), "variation": OPTIONS,
                                                    **options})


def finish_child(child, out_dir, timeout=240):
    import generation_child

    child.join(timeout)
    assert child.exitcode == 0, f"the child process ended with {child.exitcode}"
    return generation_child.result(out_dir)


def wait_for(path, child, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        assert child.is_alive(), f"the child process ended with {child.exitcode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_second_run_on_the_same_folder_fails_naming_the_first_or_waits_for_it(ds, clean_run, tmp_path):
    import threading

    ds_dir, out_dir, pause = tmp_path / "input", tmp_path / "variations", tmp_path / "go"
    ds.save_to_disk(str(ds_dir))
    first = start_child(ds_dir, out_dir, pause_file=str(pause), call=dict(batch_size=2, shard_size=4))
    try:
        wait_for(str(pause) + ".started", first)  # the first run holds the folder and is generating
        variation = ddim_variation()
        calls = count_calls(variation)
        with pytest.raises(RuntimeError, match=f"in use by another generate_variations \\(process {first.pid} on "):
            hbg.generate_variations(load_from_disk(str(ds_dir)), variation, out_dir, batch_size=2, shard_size=4)
        assert calls == []

        threading.Timer(1.0, pause.touch).start()  # the first run goes on while the second waits for the lock
        result = hbg.generate_variations(load_from_disk(str(ds_dir)), variation, out_dir, batch_size=2, shard_size=4,
                                         wait=True)
    finally:
        pause.touch()
        done = finish_child(first, out_dir)
    assert done["rows"] == 20 and done["pid"] == first.pid
    assert calls == []  # every shard was done by the first run, and trusted after verification
    assert rows(result) == rows(clean_run[1])


def test_a_tampered_shard_with_a_matching_manifest_is_caught_by_its_rows(ds, clean_run, tmp_path, caplog):
    # Shard 0 copied over shard 1 together with a manifest rewritten to match the file: size and checksum agree,
    # but the rows are those of source rows 0-3, not 4-7. The row check catches it and the shard is redone.
    import shutil

    from hf_backdoor_guard.variations import shards

    out_dir = copy_run(clean_run, tmp_path)
    first, second = shard_files(out_dir)[:2]
    shutil.copyfile(first, second)
    manifest = json.loads((out_dir / "data-00001.json").read_text())
    manifest.update(num_bytes=second.stat().st_size, xxh3_128=shards.file_digest(second))
    (out_dir / "data-00001.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="hf_backdoor_guard"):
        result = hbg.generate_variations(ds, ddim_variation(), out_dir, batch_size=2, shard_size=4)
    assert "does not hold the variations of source rows 4-7" in caplog.text
    assert rows(result) == rows(clean_run[1])
    # and at assembly, a shard that does not hold its rows stops the run with an error naming it
    shutil.copyfile(first, second)
    with pytest.raises(ValueError, match=f"{second} does not hold the variations of source rows 4-7"):
        shards.load_shards(out_dir, shards.shard_specs(10, 4), 2)


def test_changed_input_rows_refuse_to_resume(ds, clean_run, tmp_path):
    out_dir = copy_run(clean_run, tmp_path)
    images = list(ds["image"])
    images[5] = Image.new("RGB", (32, 32), "white")
    changed = Dataset.from_dict({"image": images, "label": ds["label"]}, features=ds.features)
    with pytest.raises(ValueError, match="input rows 4-7 differ from those .*data-00001.arrow was made from"):
        hbg.generate_variations(changed, ddim_variation(), out_dir, batch_size=2, shard_size=4)


def test_a_folder_of_the_old_format_is_named_and_left_alone(ds, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "variations_manifest.json").write_text(json.dumps({"version": 1}))
    (old / "data-00000-of-00001.arrow").write_bytes(b"old shard")
    with pytest.raises(ValueError, match="written by an older version of generate_variations"):
        hbg.generate_variations(ds, ddim_variation(), old, batch_size=2)
    assert sorted(p.name for p in old.iterdir()) == ["data-00000-of-00001.arrow", "variations_manifest.json"]


def test_load_from_disk_layout_matches_what_datasets_writes(tmp_path):
    # write_load_from_disk_layout writes datasets' save_to_disk layout by hand (there is no public way to
    # declare existing Arrow files a saved dataset). If datasets changes that layout, this test says so.
    from hf_backdoor_guard.variations import shards

    Dataset.from_dict({"a": [1, 2]}).save_to_disk(str(tmp_path / "saved"))
    theirs = json.loads((tmp_path / "saved" / "state.json").read_text())
    spec = shards.ShardSpec(0, 0, 2)
    (tmp_path / "ours").mkdir()
    Dataset.from_dict({"a": [1, 2]}).to_parquet(str(tmp_path / "unused.parquet"))  # any files; only keys compared
    shards.write_load_from_disk_layout(tmp_path / "ours", [spec], Features({"a": ImageFeature()}), "0" * 16)
    ours = json.loads((tmp_path / "ours" / "state.json").read_text())
    assert sorted(ours) == sorted(theirs), (
        "datasets changed the save_to_disk state.json layout: update "
        "hf_backdoor_guard.variations.shards.write_load_from_disk_layout"
    )
    assert sorted(os.listdir(tmp_path / "saved")) == sorted(["state.json", "dataset_info.json",
                                                             "data-00000-of-00001.arrow"])


def test_a_plain_call_does_not_start_accelerate(ds, tmp_path):
    from accelerate import PartialState

    before = dict(PartialState._shared_state)  # test-only look at accelerate's singleton
    hbg.generate_variations(ds.select(range(2)), ddim_variation(), tmp_path / "v", batch_size=2, progress=False)
    if not before:
        assert PartialState._shared_state == {}


# ============================================================== overlap of CPU work with the denoising (issue 15.1)


def sd_variation(**options):
    path, extra = saved_family("sd-image-variation")
    # a batch-dependent family (batched kernels round differently), sources of other sizes (resize), colors, sources
    return hbg.ImageVariation.from_pretrained(path, **extra, size=32, num_inference_steps=2, num_variations=2,
                                              keep_source=True, **options)


@pytest.fixture(scope="module")
def mixed_ds():
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (20 + 7 * (i % 3), 33, 3), dtype=np.uint8)) for i in range(7)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["cat", "dog", "emu"])})
    return Dataset.from_dict({"image": images, "label": [i % 3 for i in range(7)]}, features=features)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_overlap_gives_the_bytes_of_map_and_of_the_plain_loop(mixed_ds, batch_size, tmp_path):
    variation = sd_variation()
    mapped = mixed_ds.map(variation, batched=True, batch_size=batch_size, with_indices=True)
    # shards of 2 batches: the batch layout of map, which this family's batched kernels depend on
    on = hbg.generate_variations(mixed_ds, variation, tmp_path / "on", batch_size=batch_size,
                                 shard_size=2 * batch_size, progress=False)
    off = hbg.generate_variations(mixed_ds, variation, tmp_path / "off", batch_size=batch_size,
                                  shard_size=2 * batch_size, progress=False, overlap=False)
    assert rows(on) == rows(mapped) == rows(off)
    assert [p.read_bytes() for p in shard_files(tmp_path / "on")] == \
        [p.read_bytes() for p in shard_files(tmp_path / "off")]


def test_an_error_in_the_writer_thread_reaches_the_caller_with_its_message(ds, clean_run, tmp_path):
    variation = ddim_variation()
    original, seen = variation.postprocess, []

    def failing(images, arrays):
        seen.append(len(images))
        if len(seen) == 3:  # first batch of shard 1
            raise ValueError("color transfer broke on purpose")
        return original(images, arrays)

    variation.postprocess = failing
    out_dir = tmp_path / "v"
    with pytest.raises(ValueError, match="color transfer broke on purpose"):
        hbg.generate_variations(ds, variation, out_dir, batch_size=2, shard_size=4)
    assert [p.name for p in shard_files(out_dir)] == ["data-00000.arrow"]
    assert not list(out_dir.glob(".*partial"))  # the unfinished shard's file is ours and was removed
    result = hbg.generate_variations(ds, ddim_variation(), out_dir, batch_size=2, shard_size=4)
    assert rows(result) == rows(clean_run[1])


def test_an_unreadable_image_met_by_the_reader_thread_names_its_row(ds, tmp_path):
    from datasets import Image as ImageFeature_

    raw = ds.cast_column("image", ImageFeature_(decode=False))
    cells = list(raw["image"])
    cells[5] = {"bytes": b"not an image", "path": None}
    broken = Dataset.from_dict({"image": cells, "label": ds["label"]}, features=ds.features)
    with pytest.raises(ValueError, match="Unreadable value in column 'image', row 5: UnidentifiedImageError"):
        hbg.generate_variations(broken, ddim_variation(), tmp_path / "v", batch_size=2, shard_size=4)


# ============================================================== scale-out (issue 15.4)


def test_two_machines_without_shared_storage_write_parts_that_merge(ds, clean_run, tmp_path):
    # Two real processes at once, each standing for a machine: part i of 2 into a folder of its own.
    ds_dir = tmp_path / "input"
    ds.save_to_disk(str(ds_dir))
    folders = [tmp_path / "node0", tmp_path / "node1"]
    runs = [start_child(ds_dir, folder, call=dict(batch_size=2, shard_size=4, part_index=i, num_parts=2))
            for i, folder in enumerate(folders)]
    assert [finish_child(run, folder)["rows"] for run, folder in zip(runs, folders)] == [12, 8]
    assert [p.name for p in shard_files(folders[0])] == ["data-00000.arrow", "data-00002.arrow"]
    assert [p.name for p in shard_files(folders[1])] == ["data-00001.arrow"]
    assert not (folders[0] / "state.json").exists()  # a part alone must not open as the whole dataset

    with pytest.raises(ValueError, match=r"Shard 1 \(rows 4-7\) is in none of the folders"):
        hbg.merge_variation_shards(folders[:1], tmp_path / "merged-alone")
    merged = hbg.merge_variation_shards(folders, tmp_path / "merged")
    assert rows(merged) == rows(clean_run[1])
    assert rows(load_from_disk(str(tmp_path / "merged"))) == rows(clean_run[1])
    assert [p.read_bytes() for p in shard_files(tmp_path / "merged")] == \
        [p.read_bytes() for p in shard_files(clean_run[0])]
    # merging into one of the parts' folders works too, and a damaged shard is refused by name
    assert rows(hbg.merge_variation_shards(folders, folders[0])) == rows(clean_run[1])
    damaged = folders[1] / "data-00001.arrow"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{damaged} cannot be merged: it holds 100 bytes"):
        hbg.merge_variation_shards(folders, tmp_path / "merged-damaged")


@pytest.fixture(scope="module")
def parquet_files(ds, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parquet")
    ds.select(range(6)).to_parquet(str(folder / "part-0.parquet"))
    ds.select(range(6, 10)).to_parquet(str(folder / "part-1.parquet"))
    return [str(folder / "part-0.parquet"), str(folder / "part-1.parquet")]


def stream(files):
    from datasets import load_dataset

    return load_dataset("parquet", data_files=files, split="train", streaming=True)


def test_streaming_input_gives_the_same_shards_and_resumes_by_row_count(clean_run, parquet_files, tmp_path):
    out_dir = tmp_path / "streamed"
    interrupted = ddim_variation()
    count_calls(interrupted, fail_after=3)  # dies in shard 1
    with pytest.raises(KeyboardInterrupt):
        hbg.generate_variations(stream(parquet_files), interrupted, out_dir, batch_size=2, shard_size=4)
    assert [p.name for p in shard_files(out_dir)] == ["data-00000.arrow"]

    resumed = ddim_variation()
    calls = count_calls(resumed)
    result = hbg.generate_variations(stream(parquet_files), resumed, out_dir, batch_size=2, shard_size=4)
    assert calls == [4, 4, 4]  # shard 0 skipped by row count; shards 1 (2 batches) and 2 (1 batch)
    assert rows(result) == rows(clean_run[1])
    assert [p.read_bytes() for p in shard_files(out_dir)] == [p.read_bytes() for p in shard_files(clean_run[0])]

    again = ddim_variation()
    calls = count_calls(again)
    assert rows(hbg.generate_variations(stream(parquet_files), again, out_dir, batch_size=2, shard_size=4)) == \
        rows(clean_run[1])
    assert calls == []
    with pytest.raises(ValueError, match="stream's rows differ|input rows .* differ"):
        hbg.generate_variations(stream(parquet_files[::-1]), ddim_variation(), out_dir, batch_size=2, shard_size=4)


class RecordingHfApi:
    """Stand-in for huggingface_hub.HfApi: no offline server accepts uploads (olah, the local Hub of the other
    tests, is read-only), so the calls are recorded, with what each uploaded file held at the time."""

    calls: list = []
    fail_paths: set = set()

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, repo_type=None, commit_message=None, **kwargs):
        import pyarrow.parquet as pq

        if path_in_repo in self.fail_paths:
            raise ConnectionError("hub unreachable")
        if path_in_repo.endswith(".parquet"):
            table = pq.read_table(path_or_fileobj)
            held = (table.num_rows, sorted(set(table.column("source_index").to_pylist())))
        else:
            held = path_or_fileobj.decode()
        self.calls.append(("upload_file", path_in_repo, repo_id, repo_type, self.token, held))


def test_finished_shards_are_pushed_to_a_hub_dataset_repo_as_parquet(ds, clean_run, tmp_path, monkeypatch):
    from hf_backdoor_guard.variations import hub_push

    api = type("Recording", (RecordingHfApi,), {"calls": [], "fail_paths": {"data/train-00001.parquet"}})
    monkeypatch.setattr(hub_push, "HfApi", api)
    out_dir = tmp_path / "v"
    with pytest.raises(RuntimeError, match=r"shards \[1\] could not be pushed to hbg/varied \(first error: "
                                           "ConnectionError: hub unreachable\\)"):
        hbg.generate_variations(ds, ddim_variation(), out_dir, batch_size=2, shard_size=4, push_to_hub="hbg/varied",
                                hub_token="hf_dummy")
    assert api.calls == [
        ("create_repo", "hbg/varied", "dataset", None, True),
        ("upload_file", "data/train-00000.parquet", "hbg/varied", "dataset", "hf_dummy", (8, [0, 1, 2, 3])),
        ("upload_file", "data/train-00002.parquet", "hbg/varied", "dataset", "hf_dummy", (4, [8, 9])),
    ]
    assert not list(out_dir.glob(".*staging"))  # staged parquet files are removed after each upload

    api.calls.clear()
    api.fail_paths = set()
    variation = ddim_variation()
    calls = count_calls(variation)
    result = hbg.generate_variations(ds, variation, out_dir, batch_size=2, shard_size=4, push_to_hub="hbg/varied",
                                     hub_token="hf_dummy")
    assert calls == [] and rows(result) == rows(clean_run[1])
    assert [call[1] for call in api.calls] == ["hbg/varied", "data/train-00001.parquet", "README.md"]
    assert api.calls[1][-1] == (8, [4, 5, 6, 7])
    card = api.calls[2][-1]
    assert "path: data/train-*" in card and '"num_variations": 2' in card
    with pytest.raises(ValueError, match="push_to_hub must be a Hub dataset repo id"):
        hbg.generate_variations(ds, ddim_variation(), tmp_path / "w", push_to_hub="no-namespace")
