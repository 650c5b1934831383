"""Publishing to and loading from the Hub.

Pulls run against a real Hub-compatible server: olah, started on 127.0.0.1 by the
``local_hub`` fixture and serving git repositories made from what ``publish_model`` /
``publish_dataset`` staged (see ``hub_server.py``). No offline server accepts uploads,
so the upload call itself is checked with ``RecordingHfApi``, a recording stand-in for
``huggingface_hub.HfApi``: the tests check what the code sends (folder and its files,
repo type, commit message, private flag), not that a server stored it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.utils import filter_repo_objects
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
from transformers.utils import logging as hf_logging

from hf_backdoor_guard.hub import cards
from hf_backdoor_guard.hub import publish as hub
from hf_backdoor_guard.cli import build_parser, main

hf_logging.disable_progress_bar()

METRICS_V1 = {
    "badnets": {"clean_accuracy": 0.91, "attack_success_rate": 0.03, "robust_accuracy": 0.87},
    "blended": {"clean_accuracy": 0.9, "attack_success_rate": 0.12, "robust_accuracy": 0.8},
}
METRICS_V2 = {"badnets": {"clean_accuracy": 0.93, "attack_success_rate": 0.01, "robust_accuracy": 0.9}}
CARD_INFO = dict(
    base_dataset="uoft-cs/cifar10",
    teacher="tiny ViT trained on the poisoned data",
    diffusion_model="lambdalabs/sd-image-variations-diffusers",
    diffusion_settings={"num_inference_steps": 50, "guidance_scale": 3.0},
    distillation_settings={"alpha": 0.5, "temperature": 10.0},
    seed=1234,
    license="mit",
    target_label=0,
    poison_rate=0.1,
)


def tiny_model(seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8, num_labels=3, id2label={0: "cat", 1: "dog", 2: "frog"},
        label2id={"cat": 0, "dog": 1, "frog": 2},
    )
    return ViTForImageClassification(config).eval()


def tiny_processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": 8, "width": 8})


def variations_dataset(rows: int = 6, seed: int = 0) -> Dataset:
    """Variations + labels, plus what publish_dataset must leave out by default."""
    rng = np.random.default_rng(seed)

    def img():
        return PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))

    features = Features(
        image=Image(), label=ClassLabel(names=["cat", "dog", "frog"]), source_image=Image(),
        poisoned=Value("bool"), original_label=Value("int64"), variation_index=Value("int64"),
    )
    return Dataset.from_dict(
        {
            "image": [img() for _ in range(rows)],
            "label": [i % 3 for i in range(rows)],
            "source_image": [img() for _ in range(rows)],
            "poisoned": [i == 0 for i in range(rows)],
            "original_label": [(i + 1) % 3 if i == 0 else i % 3 for i in range(rows)],
            "variation_index": [0] * rows,
        },
        features=features,
    )


def pixel_digest(image) -> str:
    return hashlib.md5(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


class RecordingHfApi:
    """Stand-in for HfApi: records create_repo / upload_folder and what the folder held then."""

    calls: list = []
    fail_with: Exception | None = None

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", dict(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=exist_ok)))
        return f"https://hub.invalid/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None, allow_patterns=None,
                      ignore_patterns=None, **kwargs):
        if self.fail_with is not None:
            raise self.fail_with
        root = Path(folder_path)
        # The files upload_folder would send, selected by huggingface_hub's own pattern filter.
        files = sorted(filter_repo_objects(
            (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
            allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
        ))
        self.calls.append(
            ("upload_folder", dict(repo_id=repo_id, folder_path=str(folder_path), repo_type=repo_type,
                                   commit_message=commit_message, files=files, token=self.token))
        )


@pytest.fixture
def recording_api(monkeypatch):
    api = type("RecordingHfApiForTest", (RecordingHfApi,), {"calls": [], "fail_with": None})
    monkeypatch.setattr(hub, "HfApi", api)
    return api


# ============================================================== the real local Hub


@pytest.fixture(scope="module")
def local_hub(tmp_path_factory):
    import olah  # noqa: F401  (the test extra installs olah==0.5.4; a missing server must fail, not skip)

    assert shutil.which("git"), "olah serves git repositories: the git binary is needed"
    from hub_server import LocalHub

    server = LocalHub(tmp_path_factory.mktemp("local-hub"))
    server.start()
    yield server
    server.stop()


CLIENT = textwrap.dedent(
    """
    import glob, hashlib, json, os
    import numpy as np, torch
    torch.set_num_threads(1)
    import hf_backdoor_guard as hbg
    from datasets import load_dataset
    from huggingface_hub import ModelCard, constants

    case = json.loads({case!r})
    out = {{"endpoint": constants.ENDPOINT}}

    def attempt(name, fn):
        try:
            out[name] = {{"ok": fn()}}
        except Exception as err:
            out[name] = {{"error": type(err).__name__, "message": str(err)}}

    def load_main():
        model, processor, metrics = hbg.load_robust_model("hbg/robust-vit")
        with torch.no_grad():
            logits = model(pixel_values=torch.tensor(case["pixel_values"])).logits
        return {{"metrics": metrics, "logits": logits.tolist(), "model": type(model).__name__,
                "processor": type(processor).__name__, "size": dict(processor.size),
                "id2label": {{str(k): v for k, v in model.config.id2label.items()}}}}

    def card():
        card = ModelCard.load("hbg/robust-vit")
        return {{"text": card.text, "license": card.data.license,
                "results": [(r.task_type, r.dataset_type, r.dataset_config, r.metric_type, r.metric_value)
                            for r in card.data.eval_results]}}

    def dataset():
        ds = load_dataset("hbg/clean-variations")
        return {{split: {{"rows": len(part), "columns": part.column_names,
                         "label_names": part.features["label"].names, "labels": list(part["label"]),
                         "pixels": [hashlib.md5(np.asarray(im.convert("RGB")).tobytes()).hexdigest()
                                    for im in part["image"]]}}
                for split, part in ds.items()}}

    attempt("main", load_main)
    attempt("old_revision", lambda: hbg.load_robust_model("hbg/robust-vit", revision=case["first_sha"]).metrics)
    attempt("card", card)
    attempt("dataset", dataset)
    attempt("no_metrics", lambda: hbg.load_robust_model("hbg/no-metrics"))
    attempt("pickle_only", lambda: hbg.load_robust_model("hbg/pickle-only"))
    attempt("missing", lambda: hbg.load_robust_model("hbg/does-not-exist"))
    out["downloaded_pickles"] = glob.glob(os.path.join(os.environ["HF_HOME"], "**", "*.bin"), recursive=True)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def pulled(local_hub, tmp_path_factory):
    """Publish (staging only) to folders, serve them as repos, pull everything back in one client process."""
    work = tmp_path_factory.mktemp("staging")
    model, processor = tiny_model(), tiny_processor()

    # Two publishes into the same staging folder -> two commits, to test revision pinning.
    staged = hub.publish_model(model, "hbg/robust-vit", METRICS_V1, processor, output_dir=work / "m", push=False, **CARD_INFO)
    first_sha = local_hub.add_repo("model", "hbg/robust-vit", staged, "first results")
    staged = hub.publish_model(model, "hbg/robust-vit", METRICS_V2, processor, output_dir=work / "m", push=False, **CARD_INFO)
    local_hub.add_repo("model", "hbg/robust-vit", staged, "better results")

    # A card a person wrote by hand: no model-index.
    plain = work / "plain"
    shutil.copytree(staged, plain)
    (plain / "README.md").write_text("---\nlicense: mit\n---\n# Some classifier\nNo numbers here.\n")
    local_hub.add_repo("model", "hbg/no-metrics", plain)

    # Only pickle weights (a legacy checkpoint), but a card with metrics.
    legacy = work / "legacy"
    legacy.mkdir()
    shutil.copy(staged / "config.json", legacy)
    shutil.copy(staged / "README.md", legacy)
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    local_hub.add_repo("model", "hbg/pickle-only", legacy)

    ds = DatasetDict(train=variations_dataset(6, seed=1), test=variations_dataset(3, seed=2))
    staged_ds = hub.publish_dataset(ds, "hbg/clean-variations", output_dir=work / "d", push=False, **CARD_INFO)
    local_hub.add_repo("dataset", "hbg/clean-variations", staged_ds)

    pixel_values = processor(images=[variations_dataset(2)[i]["image"] for i in range(2)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected_logits = model(pixel_values=pixel_values).logits
    case = {"pixel_values": pixel_values.tolist(), "first_sha": first_sha}
    result = local_hub.run_python(CLIENT.format(case=json.dumps(case)))
    result["expected_logits"] = expected_logits.tolist()
    result["source_dataset"] = ds
    return result


def test_client_really_talks_to_the_local_hub(pulled, local_hub):
    assert pulled["endpoint"] == local_hub.endpoint
    assert "GET /api/models/hbg/robust-vit" in local_hub.log()


def test_published_model_loads_back_with_processor_and_metrics(pulled):
    assert "ok" in pulled["main"], pulled["main"]
    got = pulled["main"]["ok"]
    assert got["metrics"] == METRICS_V2  # main holds the newest publish
    assert got["model"] == "ViTForImageClassification"
    assert got["processor"].startswith("ViTImageProcessor")
    assert got["size"] == {"height": 8, "width": 8}
    assert got["id2label"] == {"0": "cat", "1": "dog", "2": "frog"}
    np.testing.assert_allclose(got["logits"], pulled["expected_logits"], atol=1e-6)


def test_revision_pins_an_older_publish(pulled):
    assert pulled["old_revision"] == {"ok": METRICS_V1}


def test_card_on_the_hub_states_results_and_provenance(pulled):
    card = pulled["card"]["ok"]
    assert card["license"] == "mit"
    assert sorted(card["results"]) == sorted(
        ["image-classification", "uoft-cs/cifar10", "badnets", key, value]
        for key, value in METRICS_V2["badnets"].items()
    )
    text = card["text"]
    for needle in (
        "uoft-cs/cifar10", "tiny ViT trained on the poisoned data", "lambdalabs/sd-image-variations-diffusers",
        "num_inference_steps | 50", "guidance_scale | 3.0", "temperature | 10.0", "| Seed | 1234 |",
        "| License | mit |", "2310.06372", "Struppek", "93.00%", 'hbg.load_robust_model("hbg/robust-vit")',
    ):
        assert needle in text, needle


def test_card_without_metrics_is_a_clear_error(pulled):
    assert pulled["no_metrics"]["error"] == "ValueError"
    assert "no model-index metrics" in pulled["no_metrics"]["message"]
    assert "hbg/no-metrics" in pulled["no_metrics"]["message"]


def test_pickle_only_repo_is_refused_without_downloading_the_pickle(pulled):
    assert pulled["pickle_only"]["error"] == "ValueError"
    message = pulled["pickle_only"]["message"]
    assert "only pickle weights" in message and "pytorch_model.bin" in message
    assert pulled["downloaded_pickles"] == []


def test_missing_repo_is_a_clear_error(pulled, local_hub):
    assert pulled["missing"]["error"] == "FileNotFoundError"
    assert "'hbg/does-not-exist' was not found" in pulled["missing"]["message"]
    assert local_hub.endpoint in pulled["missing"]["message"]


def test_published_dataset_loads_back_without_source_or_ground_truth(pulled):
    assert "ok" in pulled["dataset"], pulled["dataset"]
    got = pulled["dataset"]["ok"]
    source = pulled["source_dataset"]
    assert sorted(got) == ["test", "train"]
    for split in ("train", "test"):
        assert got[split]["columns"] == ["image", "label", "variation_index"]
        assert got[split]["rows"] == len(source[split])
        assert got[split]["label_names"] == ["cat", "dog", "frog"]
        assert got[split]["labels"] == list(source[split]["label"])
        assert got[split]["pixels"] == [pixel_digest(im) for im in source[split]["image"]]


# ============================================================== uploads (recording stand-in)


def test_publish_model_uploads_the_staged_folder(recording_api, tmp_path):
    staged = hub.publish_model(
        tiny_model(), "hbg/robust-vit", METRICS_V1, tiny_processor(), output_dir=tmp_path / "out",
        private=True, commit_message="robust student v1", token="hf_dummy", **CARD_INFO,
    )
    assert staged == tmp_path / "out"
    assert recording_api.calls[0] == (
        "create_repo", dict(repo_id="hbg/robust-vit", repo_type="model", private=True, exist_ok=True)
    )
    name, upload = recording_api.calls[1]
    assert name == "upload_folder"
    assert upload["folder_path"] == str(staged)
    assert upload["repo_type"] == "model" and upload["commit_message"] == "robust student v1"
    assert upload["token"] == "hf_dummy"
    # Safetensors + config + processor + card; the staging marker stays local; no pickle.
    assert upload["files"] == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    # The staged folder loads locally too (review before pushing).
    model, processor, metrics = hub.load_robust_model(str(staged))
    assert metrics == METRICS_V1 and processor is not None
    assert isinstance(model, ViTForImageClassification)


def test_publish_dataset_uploads_a_dataset_repo(recording_api, tmp_path):
    staged = hub.publish_dataset(variations_dataset(4), "hbg/clean", output_dir=tmp_path / "ds", **CARD_INFO)
    assert recording_api.calls[0] == ("create_repo", dict(repo_id="hbg/clean", repo_type="dataset", private=None, exist_ok=True))
    upload = recording_api.calls[1][1]
    assert upload["repo_type"] == "dataset" and upload["folder_path"] == str(staged)
    assert upload["commit_message"] == "Upload cleaned dataset made with hf-backdoor-guard"
    assert upload["files"] == ["README.md", "data/train-00000-of-00001.parquet"]
    data = DatasetCard.load(staged / "README.md").data
    assert data.license == "mit" and data.task_categories == ["image-classification"]
    assert data.size_categories == ["n<1K"] and data.source_datasets == ["extended|uoft-cs/cifar10"]
    assert data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]


def test_failed_upload_keeps_the_staged_folder_and_names_it(recording_api, tmp_path):
    recording_api.fail_with = ConnectionError("hub unreachable")
    with pytest.raises(hub.PublishError) as info:
        hub.publish_model(tiny_model(), "hbg/robust-vit", METRICS_V1, tiny_processor(), output_dir=tmp_path / "out")
    assert str(tmp_path / "out") in str(info.value) and "hub unreachable" in str(info.value)
    assert info.value.staged_path == tmp_path / "out"
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "README.md").is_file()
    # Retrying into the same folder works once the hub is back.
    recording_api.fail_with = None
    hub.publish_model(tiny_model(), "hbg/robust-vit", METRICS_V1, tiny_processor(), output_dir=tmp_path / "out")
    assert recording_api.calls[-1][0] == "upload_folder"


# ============================================================== staging rules and bad input


def test_refuses_an_output_dir_with_the_users_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and was not written by `publish`"):
        hub.publish_model(tiny_model(), "hbg/x", METRICS_V1, output_dir=mine, push=False)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep me"


def test_restaging_our_own_folder_replaces_stale_files(tmp_path):
    out = tmp_path / "out"
    hub.publish_model(tiny_model(), "hbg/x", METRICS_V1, tiny_processor(), output_dir=out, push=False)
    assert (out / "preprocessor_config.json").is_file()
    hub.publish_model(tiny_model(), "hbg/x", METRICS_V2, None, output_dir=out, push=False)
    assert not (out / "preprocessor_config.json").exists()
    assert hub.card_metrics(ModelCard.load(out / "README.md")) == METRICS_V2


@pytest.mark.parametrize(
    ("metrics", "match"),
    [
        ({}, "non-empty dict keyed by attack"),
        ({"badnets": {"clean_accuracy": 0.9, "attack_success_rate": 0.1}}, r"metrics\['badnets'\] lacks \['robust_accuracy'\]"),
        ({"wanet": {**METRICS_V2["badnets"], "robust_accuracy": 87.0}}, r"metrics\['wanet'\]\['robust_accuracy'\] must lie in \[0, 1\]"),
        ({"sig": {**METRICS_V2["badnets"], "clean_accuracy": float("nan")}}, r"\['sig'\]\['clean_accuracy'\]"),
        ({"sig": 0.9}, r"metrics\['sig'\] must be a dict"),
        ({"badnets": {"clean_accuracy": 0.9}}, r"lacks \['attack_success_rate', 'robust_accuracy'\].*only attack 'none'"),
        ({"none": {"attack_success_rate": 0.1}}, r"metrics\['none'\] lacks \['clean_accuracy', 'robust_accuracy'\]"),
    ],
)
def test_bad_metrics_fail_before_anything_is_staged(tmp_path, metrics, match):
    with pytest.raises(ValueError, match=match):
        hub.publish_model(tiny_model(), "hbg/x", metrics, output_dir=tmp_path / "out", push=False)
    assert not (tmp_path / "out").exists()


def test_a_model_measured_without_an_attack_states_clean_accuracy_only(tmp_path):
    # defend on a user's own data: no trigger is known, so the card states C-Acc and says so
    out = hub.publish_model(tiny_model(), "hbg/mine", {"none": {"clean_accuracy": 0.93}}, tiny_processor(),
                            output_dir=tmp_path / "out", push=False, base_dataset="my photos")
    card = ModelCard.load(out / "README.md")
    assert "| none (clean data only) | 93.00% | not measured | not measured |" in card.text
    assert [r.metric_type for r in card.data.eval_results] == ["clean_accuracy"]
    assert hub.load_robust_model(str(out)).metrics == {"none": {"clean_accuracy": 0.93}}


def test_bad_repo_id_and_card_info_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a valid Hub repository id"):
        hub.publish_model(tiny_model(), "not a/valid//id", METRICS_V1, output_dir=tmp_path / "a", push=False)
    with pytest.raises(ValueError, match="diffusion_settings must be a dict"):
        hub.publish_model(tiny_model(), "hbg/x", METRICS_V1, output_dir=tmp_path / "a", push=False, diffusion_settings="50 steps")
    with pytest.raises(ValueError, match="seed must be an int"):
        hub.publish_dataset(variations_dataset(2), "hbg/x", output_dir=tmp_path / "a", push=False, seed="42")
    assert not (tmp_path / "a").exists()


def test_dataset_column_checks_and_opt_ins(tmp_path):
    ds = variations_dataset(4)
    before = (ds.column_names, ds._fingerprint)
    with pytest.raises(ValueError, match="Label column 'target' not found"):
        hub.publish_dataset(ds, "hbg/x", label_column="target", output_dir=tmp_path / "bad", push=False)
    assert not (tmp_path / "bad").exists()

    staged = hub.publish_dataset(
        ds, "hbg/x", keep_source_images=True, keep_poisoning_columns=True, output_dir=tmp_path / "all", push=False
    )
    reloaded = load_dataset(str(staged), split="train")  # the staged folder is itself a loadable dataset repo
    assert reloaded.column_names == ds.column_names
    assert list(reloaded["poisoned"]) == list(ds["poisoned"])
    assert (ds.column_names, ds._fingerprint) == before  # the user's dataset is untouched
    assert "**Kept on request:** `original_label`, `poisoned`, `source_image`." in (staged / "README.md").read_text()

    staged = hub.publish_dataset(ds, "hbg/x", output_dir=tmp_path / "clean", push=False, base_dataset="my digits")
    text = (staged / "README.md").read_text()
    assert "Left out on purpose: `original_label`, `poisoned`, `source_image`" in text
    assert "my digits" in text and "2310.06372" in text and "configs:" in text
    assert "Kept on request" not in text


# ============================================================== command line


def test_cli_publishes_a_model_folder(tmp_path, caplog):
    model_dir = tmp_path / "student"
    tiny_model().save_pretrained(model_dir)
    tiny_processor().save_pretrained(model_dir)
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text(json.dumps(METRICS_V1))
    out = tmp_path / "staged"
    code = main([
        "publish", str(model_dir), "hbg/cli-model", "--metrics", str(metrics_file), "--no-push",
        "--output-dir", str(out), "--info", "seed=7", "--info", "base_dataset=sklearn digits",
        "--info", 'diffusion_settings={"strength": 0.5}',
    ])
    assert code == 0
    card = ModelCard.load(out / "README.md")
    assert hub.card_metrics(card) == METRICS_V1
    assert "| Seed | 7 |" in card.text and "sklearn digits" in card.text and "strength | 0.5" in card.text
    assert (out / "preprocessor_config.json").is_file()
    # A model without metrics is bad input: a message and exit code 2, not a traceback.
    assert main(["publish", str(model_dir), "hbg/cli-model", "--no-push", "--output-dir", str(tmp_path / "o2")]) == 2
    assert "needs its metrics" in caplog.text


def test_cli_publishes_a_saved_dataset_privately(recording_api, tmp_path):
    saved = tmp_path / "saved"
    variations_dataset(4).save_to_disk(str(saved))
    before = sorted(p.name for p in saved.iterdir())
    code = main(["publish", str(saved), "hbg/cli-data", "--private", "--output-dir", str(tmp_path / "s"),
                 "--commit-message", "cleaned digits"])
    assert code == 0
    assert recording_api.calls[0][1] == dict(repo_id="hbg/cli-data", repo_type="dataset", private=True, exist_ok=True)
    assert recording_api.calls[1][1]["commit_message"] == "cleaned digits"
    assert sorted(p.name for p in saved.iterdir()) == before  # nothing written into the user's saved dataset


def test_cli_keeps_the_demo_command():
    args = build_parser().parse_args(["demo", "--attack", "sig"])
    assert args.command == "demo" and args.attack == "sig"


def test_templates_ship_in_the_wheel():
    """Every file in model_cards/ matches the package-data patterns, so installed code finds it."""
    root = Path(__file__).resolve().parent.parent
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    setup = pyproject["tool"]["setuptools"]
    assert setup["package-dir"]["hf_backdoor_guard.model_cards"] == "model_cards"
    patterns = setup["package-data"]["hf_backdoor_guard.model_cards"]
    for path in (root / "model_cards").iterdir():
        if path.is_file() and path.suffix != ".py":
            assert any(fnmatch.fnmatch(path.name, pat) for pat in patterns), path.name
    assert "{{ card_data }}" in cards.template("model_card.md") and "{{ card_data }}" in cards.template("dataset_card.md")


def test_offline_without_a_cached_copy_is_a_clear_error():
    # conftest.py switches the Hub off (HF_HUB_OFFLINE=1) for this process.
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE.*'hbg/never-downloaded' is not in the local cache"):
        hub.load_robust_model("hbg/never-downloaded")


def test_cli_rejects_a_folder_that_is_neither_model_nor_dataset(tmp_path, caplog):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hi")
    assert main(["publish", str(tmp_path / "random"), "hbg/x", "--no-push"]) == 2
    assert "neither a saved model folder" in caplog.text


# ============================================================== faults and trust (issue 16)


def test_republishing_keeps_and_never_uploads_the_users_files(recording_api, tmp_path):
    """Regression (issue 16, defect 1): a second publish into a staged folder deleted files the user added."""
    out = tmp_path / "proj"
    hub.publish_model(tiny_model(), "hbg/x", METRICS_V1, tiny_processor(), output_dir=out, push=False)
    (out / "notes.txt").write_text("my notes")
    (out / "extra").mkdir()
    (out / "extra" / "eval.csv").write_text("a,b\n")
    hub.publish_model(tiny_model(), "hbg/x", METRICS_V2, None, output_dir=out, **CARD_INFO)
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "extra" / "eval.csv").read_text() == "a,b\n"
    # What the earlier publish staged and this one did not is gone; this publish's files are uploaded, and only they.
    assert not (out / "preprocessor_config.json").exists()
    assert recording_api.calls[-1][1]["files"] == ["README.md", "config.json", "model.safetensors"]
    assert hub.card_metrics(ModelCard.load(out / "README.md")) == METRICS_V2


def test_a_file_of_the_users_named_like_an_output_is_not_overwritten(tmp_path):
    out = tmp_path / "proj"
    hub.publish_model(tiny_model(), "hbg/x", METRICS_V1, None, output_dir=out, push=False)
    (out / "preprocessor_config.json").write_text("{\"mine\": true}")
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        hub.publish_model(tiny_model(), "hbg/x", METRICS_V1, tiny_processor(), output_dir=out, push=False)
    assert (out / "preprocessor_config.json").read_text() == "{\"mine\": true}"
    assert (out / "model.safetensors").is_file()  # the earlier publish is left as it was


def test_failed_upload_says_how_to_retry_without_touching_other_files(recording_api, tmp_path):
    recording_api.fail_with = ConnectionError("hub unreachable")
    with pytest.raises(hub.PublishError) as info:
        hub.publish_model(tiny_model(), "hbg/robust-vit", METRICS_V1, output_dir=tmp_path / "out")
    message = str(info.value)
    assert "publish again" not in message
    assert "allow_patterns=['README.md', 'config.json', 'model.safetensors']" in message
    assert info.value.staged_files == ["README.md", "config.json", "model.safetensors"]


def _edit_card_metric(folder: Path, metric: str, value: str) -> None:
    card = (folder / "README.md").read_text()
    lines = card.splitlines()
    for i, line in enumerate(lines):
        if line.strip() in (f"type: {metric}", f"- type: {metric}"):
            value_line = next(j for j in range(i, len(lines)) if lines[j].strip().startswith("value:"))
            lines[value_line] = lines[value_line].split("value:")[0] + f"value: {value}"
            break
    else:
        raise AssertionError(f"no {metric} in the card")
    (folder / "README.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("value", ["7.5", ".nan", "-0.1"])
def test_a_card_with_a_metric_outside_zero_one_does_not_load(tmp_path, value):
    """Regression (issue 16, defect 10): a card stating ASR 7.5 loaded as is."""
    staged = hub.publish_model(tiny_model(), "hbg/x", METRICS_V2, tiny_processor(), output_dir=tmp_path / "m", push=False)
    _edit_card_metric(staged, "attack_success_rate", value)
    with pytest.raises(ValueError) as info:
        hub.load_robust_model(str(staged))
    message = str(info.value)
    assert str(staged) in message and "badnets" in message and "attack_success_rate" in message
    assert ("nan" if value == ".nan" else value) in message
    with pytest.raises(ValueError, match="attack_success_rate"):
        hub.card_metrics(ModelCard.load(staged / "README.md"))


def test_a_folder_that_is_not_a_model_is_refused_without_walking_it(tmp_path):
    """Regression (issue 16, defect 10): load_robust_model('../../etc') listed every file of the tree."""
    root = tmp_path / "etc"
    for i in range(30):
        (root / f"dir{i}" / "deeper").mkdir(parents=True)
        (root / f"dir{i}" / "deeper" / f"secret{i}.txt").write_text("x")
        (root / f"file{i}.conf").write_text("x")
    with pytest.raises(ValueError) as info:
        hub.load_robust_model(str(root))
    message = str(info.value)
    assert "not a model folder" in message and "config.json" in message
    assert "secret" not in message and "deeper" not in message
    assert message.count(".conf") <= 5 and len(message) < 600
