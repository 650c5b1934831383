"""load_fashion_mnist on tiny IDX files written here (no Debian package needed), and the pretraining recipe on it."""

import gzip
import hashlib
import importlib.util
import json
import os
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, DatasetDict, Image

import hf_backdoor_guard as hbg
from hf_backdoor_guard import data as data_module
from hf_backdoor_guard.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    FASHION_MNIST_NAMES,
    fashion_mnist_split_arrays,
    load_fashion_mnist,
    read_idx,
)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ROWS, TEST_ROWS = 200, 60  # 20 and 6 of each of the 10 classes
SIZES = {"pretrain_size": 50, "train_size": 100, "test_size": 30}


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 0, 0, type code (0x08 = uint8), ndim, big-endian uint32 dims, then the data."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    raw = _idx_bytes(np.ascontiguousarray(array, dtype=np.uint8))
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _fake_arrays(train_rows=TRAIN_ROWS, test_rows=TEST_ROWS, seed=0) -> dict[str, np.ndarray]:
    """Random 28x28 pixels (so every image is unique) and shuffled labels with every class equally often."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, rows in (("train", train_rows), ("test", test_rows)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.permutation(np.arange(rows) % 10).astype(np.uint8)
    return arrays


def _write_folder(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in FASHION_MNIST_FILES.items():
        _write_idx(folder / stem, arrays[key], gz)
    return folder


@pytest.fixture(scope="module")
def source():
    return _fake_arrays()


@pytest.fixture(scope="module")
def folders(source, tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion")
    return {"plain": _write_folder(root / "plain", source, gz=False), "gz": _write_folder(root / "gz", source, gz=True)}


@pytest.fixture(scope="module")
def fashion(folders):
    return load_fashion_mnist(folders["gz"], **SIZES)


def _origin(source, split_file: str) -> dict[bytes, int]:
    """Image bytes -> row in the IDX file (the RGB rows of the dataset are that grey image in 3 channels)."""
    return {image.tobytes(): row for row, image in enumerate(source[f"{split_file}_images"])}


def _rows(split, origin) -> list[int]:
    rows = []
    for image in split["image"]:
        pixels = np.asarray(image)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
        rows.append(origin[np.ascontiguousarray(pixels[..., 0]).tobytes()])
    return rows


def test_splits_features_and_sizes(fashion):
    assert isinstance(fashion, DatasetDict)
    assert list(fashion) == ["pretrain", "train", "test"]
    assert {name: len(split) for name, split in fashion.items()} == {"pretrain": 50, "train": 100, "test": 30}
    assert FASHION_MNIST_NAMES == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    for split in fashion.values():
        assert isinstance(split.features["image"], Image)
        assert isinstance(split.features["label"], ClassLabel)
        assert split.features["label"].names == FASHION_MNIST_NAMES
        image = split[0]["image"]
        assert image.mode == "RGB" and image.size == (28, 28)  # RGB like the digits, native 28 px


def test_rows_come_from_the_right_file_with_their_labels_and_pretrain_is_disjoint_from_train(fashion, source):
    train_origin, test_origin = _origin(source, "train"), _origin(source, "test")
    pretrain_rows, train_rows = _rows(fashion["pretrain"], train_origin), _rows(fashion["train"], train_origin)
    test_rows = _rows(fashion["test"], test_origin)
    # no training image both trains the diffusion model and is in the victim's set
    assert not set(pretrain_rows) & set(train_rows)
    for rows, split, labels in ((pretrain_rows, "pretrain", source["train_labels"]),
                                (train_rows, "train", source["train_labels"]),
                                (test_rows, "test", source["test_labels"])):
        assert len(set(rows)) == len(rows)  # no row twice
        assert rows == sorted(rows)  # the files' order is kept inside a split
        assert fashion[split]["label"] == labels[rows].tolist()


def test_splits_are_stratified_by_class(fashion):
    for split in fashion.values():
        counts = np.bincount(split["label"], minlength=10)
        assert (counts == len(split) // 10).all(), counts


def _fingerprints(split) -> Counter:
    return Counter((hashlib.md5(np.asarray(image).tobytes()).hexdigest(), label)
                   for image, label in zip(split["image"], split["label"]))


def test_the_seed_fixes_the_splits_and_gz_and_plain_files_agree(fashion, folders):
    again = load_fashion_mnist(folders["plain"], seed=0, **SIZES)
    other = load_fashion_mnist(folders["gz"], seed=1, **SIZES)
    for name in fashion:
        assert _fingerprints(again[name]) == _fingerprints(fashion[name])
        assert _fingerprints(other[name]) != _fingerprints(fashion[name])


def test_arrays_match_the_dataset_and_the_package_exports_the_loader(fashion, folders):
    arrays = fashion_mnist_split_arrays(folders["plain"], **SIZES)
    for name, (images, labels) in arrays.items():
        assert images.shape == (len(fashion[name]), 28, 28, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, np.stack([np.asarray(image) for image in fashion[name]["image"]]))
        assert labels.tolist() == fashion[name]["label"]
    assert hbg.load_fashion_mnist is load_fashion_mnist and "load_fashion_mnist" in hbg.__all__


def test_a_split_may_take_every_remaining_row(folders):
    whole = fashion_mnist_split_arrays(folders["plain"], pretrain_size=120, train_size=80, test_size=60)
    assert [len(labels) for _, labels in whole.values()] == [120, 80, 60]


def test_read_idx_reads_other_types_and_shapes(tmp_path):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(">i4")  # IDX is big-endian
    (tmp_path / "ints").write_bytes(bytes([0, 0, 0x0C, 3]) + struct.pack(">3I", 2, 3, 4) + array.tobytes())
    ints = read_idx(tmp_path / "ints")
    np.testing.assert_array_equal(ints, np.arange(24).reshape(2, 3, 4) - 5)
    assert ints.dtype == np.int32 and ints.dtype.isnative and ints.flags.writeable


@pytest.mark.parametrize("gz", [False, True])
def test_bad_idx_files_are_named(tmp_path, source, gz):
    good = _idx_bytes(source["train_images"])
    cases = {
        "bad-magic": b"\x1f\x8b\x08\x00" + good[4:],  # e.g. a .gz saved without its suffix
        "truncated": good[:-100],
        "header-only": good[:6],
        "too-long": good + b"\x00",
    }
    messages = {"bad-magic": "not an IDX file", "truncated": "truncated", "header-only": "truncated",
                "too-long": "longer than its header says"}
    for name, raw in cases.items():
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        with pytest.raises(ValueError, match=messages[name]) as error:
            read_idx(path)
        assert str(path) in str(error.value)
    if gz:  # a download cut off inside the gzip stream
        cut = tmp_path / "cut.gz"
        cut.write_bytes(gzip.compress(good)[:500])
        with pytest.raises(ValueError, match="not a readable gzip file") as error:
            read_idx(cut)
        assert str(cut) in str(error.value)


def test_a_bad_file_in_a_folder_fails_the_loader_by_name(tmp_path, source):
    folder = _write_folder(tmp_path / "data", source, gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(source["test_labels"])[:-3])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte is truncated"):
        load_fashion_mnist(folder, **SIZES)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(source["test_labels"][:-1]))
    with pytest.raises(ValueError, match="test IDX files .* do not match"):
        load_fashion_mnist(folder, **SIZES)


def _no_hub(*args, **kwargs):
    raise AssertionError("the loader tried the Hub in a test")


def test_no_data_anywhere_names_both_ways_and_never_tries_the_network(tmp_path, monkeypatch):
    import datasets

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest
    monkeypatch.setattr(datasets, "load_dataset", _no_hub)
    empty = tmp_path / "empty"
    empty.mkdir()
    # a folder named by the user is the only place looked at
    with pytest.raises(ValueError, match="No Fashion-MNIST data in") as error:
        load_fashion_mnist(empty)
    for words in ("apt-get install dataset-fashion-mnist", "zalando-datasets/fashion_mnist",
                  "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert words in str(error.value)
    # no folder: the Debian one (here an empty stand-in), then the Hub, which is off in tests
    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", empty)
    with pytest.raises(ValueError, match="the Hub is switched off") as error:
        load_fashion_mnist()
    assert "apt-get install dataset-fashion-mnist" in str(error.value)
    assert "zalando-datasets/fashion_mnist" in str(error.value)


def test_a_missing_file_is_named(tmp_path, source):
    folder = _write_folder(tmp_path / "data", source, gz=True)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="missing train-labels-idx1-ubyte"):
        load_fashion_mnist(folder, **SIZES)


@pytest.mark.parametrize("options, words", [
    ({"pretrain_size": 150, "train_size": 100, "test_size": 30}, "pretrain_size \\+ train_size = 250 .* 200"),
    ({"pretrain_size": 50, "train_size": 100, "test_size": 61}, "test_size = 61 .* 60"),
    ({"pretrain_size": 9, "train_size": 100, "test_size": 30}, "pretrain_size must be an int >= 10"),
    ({"pretrain_size": 50, "train_size": 100.0, "test_size": 30}, "train_size must be an int"),
])
def test_split_sizes_must_fit_the_files(folders, options, words):
    with pytest.raises(ValueError, match=words):
        load_fashion_mnist(folders["plain"], **options)


def test_split_sizes_beyond_the_real_dataset_fail_before_reading(tmp_path):
    # the empty folder would fail on reading: the size check must come first
    with pytest.raises(ValueError, match="pretrain_size \\+ train_size = 60001 .* 60000"):
        load_fashion_mnist(tmp_path, pretrain_size=55_001, train_size=5_000)
    with pytest.raises(ValueError, match="test_size = 10001 .* 10000"):
        load_fashion_mnist(tmp_path, test_size=10_001)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="the Debian package dataset-fashion-mnist is not installed")
def test_the_real_files_when_installed():
    arrays = data_module.fashion_mnist_arrays()
    assert arrays["train_images"].shape == (60_000, 28, 28) and arrays["test_images"].shape == (10_000, 28, 28)
    assert (np.bincount(arrays["train_labels"]) == 6_000).all() and (np.bincount(arrays["test_labels"]) == 1_000).all()


# --- the pretraining recipe on Fashion-MNIST ------------------------------------------------
def _load_recipe():
    spec = importlib.util.spec_from_file_location("pretrain_recipe_fashion",
                                                  ROOT / "recipes" / "pretrain_embedded_diffusion.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_recipe_trains_on_the_fashion_pretrain_split_at_28px(tmp_path):
    import torch
    from safetensors import safe_open

    # the default splits need 15,000 training and 2,000 test images
    folder = _write_folder(tmp_path / "data", _fake_arrays(15_000, 2_000), gz=False)
    out = tmp_path / "ddpm"
    _load_recipe().main(["--benchmark", "fashion-mnist", "--data_dir", str(folder), "--output_dir", str(out),
                         "--max_steps", "2", "--per_device_train_batch_size", "4", "--block_out_channels", "16,32,32",
                         "--warmup_steps", "1", "--log_every", "1"])
    record = json.loads((out / "training_args.json").read_text())
    assert record["benchmark"] == "fashion-mnist" and record["image_size"] == 28 and np.isfinite(record["final_loss"])
    assert json.loads((out / "unet" / "config.json").read_text())["sample_size"] == 28
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as weights:
        assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"F16"}
    variation = hbg.ImageVariation.from_pretrained(out, dtype=torch.float32, strength=0.5, num_inference_steps=4)
    image = load_fashion_mnist(folder, pretrain_size=10, train_size=10, test_size=10)["train"][0]["image"]
    (result,) = variation.generate([image], [0])
    assert result.size == (28, 28) and result.mode == "RGB"


@pytest.mark.parametrize("options, words", [
    (["--benchmark", "fashion-mnist", "--image_size", "32"], "fashion-mnist images are 28 px"),
    (["--benchmark", "fashion-mnist", "--block_out_channels", "32,64,128,128"], "not divisible by 2\\*\\*3"),
    (["--data_dir", "somewhere"], "data_dir is for fashion-mnist"),
])
def test_recipe_refuses_options_that_do_not_fit_the_dataset(options, words):
    with pytest.raises(ValueError, match=words):
        _load_recipe().main(["--output_dir", "unused", *options])


def test_recipe_defaults_per_dataset_keep_the_digits_ones():
    recipe = _load_recipe()
    digits = recipe.resolve_defaults(recipe.PretrainArguments())
    assert (digits.benchmark, digits.output_dir, digits.image_size) == (
        "digits", "hf_backdoor_guard/embedded/digits_ddpm", 16)
    fashion = recipe.resolve_defaults(recipe.PretrainArguments(benchmark="fashion-mnist"))
    assert (fashion.output_dir, fashion.image_size) == ("hf_backdoor_guard/embedded/fashion_mnist_ddpm", 28)
    with pytest.raises(SystemExit):  # argparse refuses an unknown world
        recipe.main(["--benchmark", "cifar10"])
