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


# --- issue 16, defect 9: unreadable images, formatted datasets and seeds -------------------------
def replace_bytes(ds, row, data):
    raw = ds.cast_column("image", Image(decode=False))
    cells = list(raw["image"])
    cells[row] = {"bytes": data, "path": None}
    return raw.remove_columns("image").add_column("image", cells, feature=Image(decode=False)).cast_column(
        "image", Image())


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_corrupt_bytes_in_the_first_chosen_row_name_the_row():
    ds = make_dataset(n=20)
    first_chosen = 1  # rate 1.0: every non-target row is chosen; row 1 comes first
    broken = replace_bytes(ds, first_chosen, b"definitely not a png")
    with pytest.raises(ValueError, match="column 'image', row 1"):
        hbg.poison_dataset(broken, hbg.BadNets(), rate=1.0)


def test_truncated_bytes_in_a_row_not_chosen_are_caught_unless_verification_is_off():
    ds = make_dataset(n=20)
    whole = png_bytes(ds[5]["image"])
    truncated = replace_bytes(ds, 5, whole[: len(whole) // 2])  # header intact, pixel data cut
    with pytest.raises(ValueError, match="column 'image', row 5"):
        hbg.poison_dataset(truncated, hbg.BadNets(), rate=0.0)
    with pytest.raises(ValueError, match="column 'image', row 5"):
        hbg.triggered_testset(truncated, hbg.BadNets(), target_label=1)  # row 5 is a target row: not triggered
    out = hbg.poison_dataset(truncated, hbg.BadNets(), rate=0.0, verify_images=False)
    assert not any(out["poisoned"])  # the escape hatch for huge sets: rows passed through are not decoded


def test_a_torch_formatted_dataset_is_poisoned_and_keeps_its_format():
    torch = pytest.importorskip("torch")
    ds = make_dataset(n=20, extra=False)
    formatted = ds.with_format("torch")
    out = hbg.poison_dataset(formatted, hbg.BadNets(), rate=0.5, seed=3)
    plain = hbg.poison_dataset(ds, hbg.BadNets(), rate=0.5, seed=3)
    assert out.format["type"] == "torch"
    assert isinstance(out[0]["label"], torch.Tensor)
    assert out.with_format(None)["poisoned"] == plain["poisoned"]
    test = hbg.triggered_testset(formatted, hbg.BadNets(), target_label=0)
    assert test.format["type"] == "torch" and len(test) == 16


@pytest.mark.parametrize("seed", [-1, 1.5, "7", None, True])
def test_a_bad_seed_is_named(seed):
    with pytest.raises(ValueError, match="seed must be an int"):
        hbg.poison_dataset(make_dataset(n=10), hbg.BadNets(), seed=seed)


# --- issue 16, defect 10: bad labels and empty poison sets --------------------------------------
def test_negative_labels_are_refused_naming_the_row():
    ds = make_dataset(n=10).cast_column("label", Value("int64"))
    labels = list(ds["label"])
    labels[4] = -1
    bad = ds.remove_columns("label").add_column("label", labels, feature=Value("int64"))
    with pytest.raises(ValueError, match="row 4"):
        hbg.poison_dataset(bad, hbg.BadNets(), rate=1.0)
    with pytest.raises(ValueError, match="row 4"):
        hbg.triggered_testset(bad, hbg.BadNets(), target_label=0)


def test_a_clean_label_attack_without_target_rows_stops_before_work():
    ds = make_dataset(n=20)
    no_target = ds.filter(lambda row: row["label"] != 2)
    with pytest.raises(ValueError, match="no rows of the target class 2"):
        hbg.poison_dataset(no_target, hbg.SIG(), target_label=2, rate=0.5)
    one_row = ds.select([1])  # label 1, target 0
    with pytest.raises(ValueError, match="no rows of the target class 0"):
        hbg.poison_dataset(one_row, hbg.SIG(), target_label=0, rate=1.0)
    assert not any(hbg.poison_dataset(one_row, hbg.SIG(), rate=0.0)["poisoned"])  # rate 0 asks for nothing


def test_a_dirty_label_attack_with_only_target_rows_stops_before_work():
    only_target = make_dataset(n=20).filter(lambda row: row["label"] == 0)
    with pytest.raises(ValueError, match="no rows outside the target class 0"):
        hbg.poison_dataset(only_target, hbg.BadNets(), rate=0.1)
    assert all(hbg.poison_dataset(only_target, hbg.BadNets(), rate=1.0, poison_target_class=True)["poisoned"])


# --- cover rows and the forms of an attack (issue 11) -------------------------------------------
def test_wanet_noise_mode_adds_cover_rows_that_keep_their_labels():
    ds = make_dataset(n=60)
    attack = hbg.WaNet()  # cover_ratio 2: the paper's cross ratio
    out = hbg.poison_dataset(ds, attack, target_label=0, rate=0.1, seed=5)
    poisoned, cover = np.asarray(out["poisoned"]), np.asarray(out["cover"])
    assert poisoned.sum() == 5 and cover.sum() == 10 and not (poisoned & cover).any()
    assert out.features["cover"] == Value("bool")
    for row in np.flatnonzero(cover):
        assert out["label"][row] == ds["label"][row]  # cover rows keep their label, any class
        expected = attack.cover_image(ds[int(row)]["image"], index=int(row), label=ds["label"][row])
        assert np.array_equal(np.asarray(out[int(row)]["image"]), np.asarray(expected))
    without = hbg.poison_dataset(ds, hbg.WaNet(cover_ratio=0.0), target_label=0, rate=0.1, seed=5)
    assert without["poisoned"] == out["poisoned"] and not any(without["cover"])  # same poisoned rows
    assert "cover" not in hbg.triggered_testset(ds, attack).column_names


def test_poisoned_rows_get_the_training_form_and_the_test_set_the_test_form():
    ds = make_dataset(n=40)
    attack = hbg.AdaptiveBlend(pieces=4, cover_ratio=1.0)
    out = hbg.poison_dataset(ds, attack, rate=0.25, seed=2)
    row = int(np.flatnonzero(out["poisoned"])[0])
    partial = attack.poison_image(ds[row]["image"], index=row, label=ds["label"][row])
    assert np.array_equal(np.asarray(out[row]["image"]), np.asarray(partial))
    assert sum(out["cover"]) == sum(out["poisoned"]) == 8
    test = hbg.triggered_testset(ds, attack, target_label=0)
    assert np.array_equal(np.asarray(test[0]["image"]), np.asarray(attack(ds[1]["image"], index=1)))


def test_cover_rows_are_capped_by_the_rows_left(caplog):
    ds = make_dataset(n=10)
    with caplog.at_level("WARNING"):
        out = hbg.poison_dataset(ds, hbg.WaNet(), rate=1.0, poison_target_class=True)
    assert all(out["poisoned"]) and not any(out["cover"])
    assert "asks for 20 cover rows but only 0 rows are not poisoned" in caplog.text


def test_clean_label_rate_is_a_share_of_the_target_class():
    ds = make_dataset(n=100)  # 20 rows per class
    out = hbg.poison_dataset(ds, hbg.SIG(), target_label=3, rate=0.3)
    assert sum(out["poisoned"]) == 6  # ceil(0.3 * 20), float noise ignored (0.3 * 20 = 6.000000000000001)
    assert all(hbg.poison_dataset(ds, hbg.SIG(), target_label=3, rate=1.0)["poisoned"][i] for i in range(3, 100, 5))
