import io
import math

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image, Value, load_from_disk
from PIL import Image as PILImage

import hf_backdoor_guard as hbg


def make_dataset(n=60, num_classes=5, size=(12, 12), seed=0, extra=True):
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]
    data = {"image": images, "label": [i % num_classes for i in range(n)]}
    features = {"image": Image(), "label": ClassLabel(num_classes=num_classes)}
    if extra:
        data["note"] = [f"row{i}" for i in range(n)]
        features["note"] = Value("string")
    return Dataset.from_dict(data, features=Features(features))


def test_subset_size_labels_and_features():
    ds = make_dataset()
    out = hbg.poison_dataset(ds, hbg.BadNets(), target_label=0, rate=0.1, seed=1)
    eligible = sum(1 for label in ds["label"] if label != 0)
    poisoned = np.flatnonzero(out["poisoned"])
    assert len(poisoned) == math.ceil(0.1 * eligible)
    assert all(ds["label"][i] != 0 for i in poisoned)
    assert all(out["label"][i] == 0 for i in poisoned)
    assert out["original_label"] == ds["label"]
    assert out["note"] == ds["note"]
    for name, feature in ds.features.items():
        assert out.features[name] == feature
    assert out.features["poisoned"] == Value("bool") and out.features["original_label"] == ds.features["label"]
    # triggered rows changed, others are byte-identical
    for i in range(len(ds)):
        same = np.array_equal(np.asarray(out[i]["image"]), np.asarray(ds[i]["image"]))
        assert same != out[i]["poisoned"]
    row = int(poisoned[0])
    assert np.array_equal(np.asarray(out[row]["image"]), np.asarray(hbg.BadNets()(ds[row]["image"], index=row)))


def test_seed_fixes_the_subset():
    ds = make_dataset(n=100)
    a = hbg.poison_dataset(ds, hbg.BadNets(), rate=0.2, seed=7)["poisoned"]
    b = hbg.poison_dataset(ds, hbg.BadNets(), rate=0.2, seed=7)["poisoned"]
    c = hbg.poison_dataset(ds, hbg.BadNets(), rate=0.2, seed=8)["poisoned"]
    assert a == b and a != c


def test_poison_target_class_and_clean_label():
    ds = make_dataset(n=50)
    everything = hbg.poison_dataset(ds, hbg.BadNets(), rate=1.0, poison_target_class=True)
    assert all(everything["poisoned"]) and set(everything["label"]) == {0}
    sig = hbg.poison_dataset(ds, hbg.SIG(), target_label=2, rate=0.5)
    hit = np.flatnonzero(sig["poisoned"])
    assert len(hit) == math.ceil(0.5 * 10)
    assert all(ds["label"][i] == 2 for i in hit)
    assert sig["label"] == ds["label"]  # clean-label: nothing relabelled
    none = hbg.poison_dataset(ds, hbg.BadNets(), rate=0.0)
    assert not any(none["poisoned"])


def test_caller_dataset_untouched_and_fingerprinted(tmp_path):
    ds = make_dataset()
    before = (ds._fingerprint, ds.column_names, ds["label"])
    out = hbg.poison_dataset(ds, hbg.Blended(), rate=0.3)
    assert (ds._fingerprint, ds.column_names, ds["label"]) == before
    again = hbg.poison_dataset(ds, hbg.Blended(), rate=0.3)
    assert out._fingerprint == again._fingerprint
    assert hbg.poison_dataset(ds, hbg.Blended(), rate=0.3, seed=1)._fingerprint != out._fingerprint
    # file-backed datasets: cached map results are reused and the source stays intact
    ds.save_to_disk(tmp_path / "src")
    on_disk = load_from_disk(str(tmp_path / "src"))
    first = hbg.poison_dataset(on_disk, hbg.BadNets(), rate=0.3)
    second = hbg.poison_dataset(on_disk, hbg.BadNets(), rate=0.3)
    assert first.cache_files and first.cache_files == second.cache_files
    assert load_from_disk(str(tmp_path / "src"))["label"] == ds["label"]


def test_triggered_testset():
    ds = make_dataset(n=30)
    attack = hbg.BadNets(location="random", seed=3)
    test = hbg.triggered_testset(ds, attack, target_label=1)
    keep = [i for i, label in enumerate(ds["label"]) if label != 1]
    assert len(test) == len(keep)
    assert set(test["label"]) == {1}
    assert test["original_label"] == [ds["label"][i] for i in keep]
    assert test["note"] == [ds["note"][i] for i in keep]
    assert "poisoned" not in test.column_names
    for position, row in enumerate(keep[:5]):  # random spots use the row's index in test_ds
        expected = attack(ds[row]["image"], index=row)
        assert np.array_equal(np.asarray(test[position]["image"]), np.asarray(expected))


def test_mixed_modes_and_sizes_in_one_dataset():
    modes = ["L", "LA", "RGBA", "P", "CMYK", "I;16", "RGB"]
    images = [PILImage.new(mode, (8 + i, 10 + 2 * i)) for i, mode in enumerate(modes)]
    ds = Dataset.from_dict(
        {"image": images, "label": [1] * len(images)},
        features=Features({"image": Image(), "label": ClassLabel(num_classes=2)}),
    )
    out = hbg.poison_dataset(ds, hbg.WaNet(), target_label=0, rate=1.0)
    assert all(out["poisoned"])
    for i, row in enumerate(out):
        assert row["image"].mode == "RGB" and row["image"].size == images[i].size


def corrupt(ds, row):
    raw = ds.cast_column("image", Image(decode=False)).to_dict()
    raw["image"][row] = {"bytes": b"definitely not a png", "path": None}
    return Dataset.from_dict(raw, features=ds.cast_column("image", Image(decode=False)).features).cast_column(
        "image", Image()
    )


@pytest.mark.parametrize("rate", [0.0, 1.0])  # the broken row is passed through / triggered
def test_unreadable_bytes_name_the_row(rate):
    ds = corrupt(make_dataset(n=20), row=7)
    with pytest.raises(ValueError, match="column 'image', row 7"):
        hbg.poison_dataset(ds, hbg.BadNets(), rate=rate, poison_target_class=True)


def test_bad_input_errors():
    ds = make_dataset(n=20)
    attack = hbg.BadNets()
    cases = [
        (lambda: hbg.poison_dataset(ds, attack, image_column="img"), "Image column 'img' not found"),
        (lambda: hbg.poison_dataset(ds, attack, label_column="y"), "Label column 'y' not found"),
        (lambda: hbg.poison_dataset(ds.rename_column("note", "n").remove_columns("label").rename_column("n", "label"),
                                    attack), "labels must be integers"),
        (lambda: hbg.poison_dataset(ds, attack, target_label=5), "target_label=5 is outside"),
        (lambda: hbg.poison_dataset(ds, attack, target_label=-1), "target_label=-1 is outside"),
        (lambda: hbg.poison_dataset(ds, attack, rate=1.5), r"rate must lie in \[0, 1\]"),
        (lambda: hbg.poison_dataset(ds, attack, rate=-0.1), r"rate must lie in \[0, 1\]"),
        (lambda: hbg.poison_dataset(ds.select([]), attack), "The dataset is empty"),
        (lambda: hbg.poison_dataset(ds, hbg.BadNets(size=13)), "size 13 does not fit an image of 12x12"),
        (lambda: hbg.poison_dataset(ds, "badnets"), "attack must be"),
        (lambda: hbg.poison_dataset(hbg.poison_dataset(ds, attack), attack), "poisoned already"),
        (lambda: hbg.triggered_testset(ds.filter(lambda r: r["label"] == 0), attack), "nothing to trigger"),
        (lambda: hbg.triggered_testset(ds, attack, target_label=9), "target_label=9 is outside"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()
    ints = ds.cast_column("label", Value("int64"))
    assert sum(hbg.poison_dataset(ints, attack, rate=0.5)["poisoned"]) == 8  # plain ints work too


def test_oversized_trigger_in_a_later_row_names_it():
    images = [PILImage.new("RGB", (12, 12))] * 3 + [PILImage.new("RGB", (2, 2))]
    ds = Dataset.from_dict({"image": images, "label": [1, 1, 1, 1]},
                           features=Features({"image": Image(), "label": ClassLabel(num_classes=2)}))
    with pytest.raises(ValueError, match="row 3"):
        hbg.poison_dataset(ds, hbg.BadNets(size=3), rate=1.0)


@pytest.mark.parametrize("rate", ["0.1", None, True])
def test_rate_of_the_wrong_type_is_a_value_error(rate):
    with pytest.raises(ValueError, match=r"rate must lie in \[0, 1\]"):
        hbg.poison_dataset(make_dataset(n=10), hbg.BadNets(), rate=rate)
