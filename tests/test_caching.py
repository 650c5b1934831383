"""The one read of a private datasets attribute (a dataset's fingerprint) stays in one helper."""

from datasets import Dataset

from hf_backdoor_guard.runtime.caching import dataset_fingerprint, derived_fingerprint


def test_dataset_fingerprint_still_reads_what_datasets_keeps():
    ds = Dataset.from_dict({"x": [1, 2, 3]})
    assert isinstance(dataset_fingerprint(ds), str), "caching.dataset_fingerprint: datasets changed Dataset._fingerprint"
    mapped = ds.map(lambda row: {"x": row["x"] + 1})
    assert dataset_fingerprint(mapped) != dataset_fingerprint(ds)


def test_derived_fingerprints_follow_the_input_and_the_parts():
    one, other = Dataset.from_dict({"x": [1]}), Dataset.from_dict({"x": [2]})
    assert derived_fingerprint(one, "a") == derived_fingerprint(one, "a")
    assert derived_fingerprint(one, "a") != derived_fingerprint(one, "b")
    assert derived_fingerprint(one, "a") != derived_fingerprint(other, "a")
