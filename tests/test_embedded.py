"""The shipped offline diffusion model, its pretraining recipe and ImageVariation.embedded()."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import hf_backdoor_guard as hbg
from hf_backdoor_guard.data import load_digits_dataset
from hf_backdoor_guard.embedded import EMBEDDED_DIFFUSION_DIR, EMBEDDED_VARIATION_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("pretrain_recipe", ROOT / "recipes" / "pretrain_embedded_diffusion.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def test_shipped_folder_is_a_small_fp16_safetensors_pipeline():
    files = {p.relative_to(EMBEDDED_DIFFUSION_DIR).as_posix() for p in EMBEDDED_DIFFUSION_DIR.rglob("*") if p.is_file()}
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".ckpt")) for name in files)  # no pickles
    total = sum(p.stat().st_size for p in EMBEDDED_DIFFUSION_DIR.rglob("*") if p.is_file())
    assert total < 10 * 2**20
    with safe_open(str(EMBEDDED_DIFFUSION_DIR / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
    assert dtypes == {"F16"}
    assert json.loads((EMBEDDED_DIFFUSION_DIR / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    unet = json.loads((EMBEDDED_DIFFUSION_DIR / "unet" / "config.json").read_text())
    assert unet["sample_size"] == 16 and unet["in_channels"] == unet["out_channels"] == 3
    scheduler = json.loads((EMBEDDED_DIFFUSION_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "squaredcos_cap_v2" and scheduler["timestep_spacing"] == "trailing"


def test_defaults_are_valid_options():
    assert 0.5 <= EMBEDDED_VARIATION_DEFAULTS["strength"] <= 1  # below 0.5 a BadNets patch survives
    assert EMBEDDED_VARIATION_DEFAULTS["num_variations"] >= 1
    assert int(EMBEDDED_VARIATION_DEFAULTS["num_inference_steps"] * EMBEDDED_VARIATION_DEFAULTS["strength"]) >= 4


def test_embedded_loads_offline_applies_defaults_and_is_deterministic(digits):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: any Hub access would fail
    images = list(digits["train"].select(range(4))["image"])
    variation = hbg.ImageVariation.embedded(num_inference_steps=8)
    assert variation.strength == EMBEDDED_VARIATION_DEFAULTS["strength"]
    assert variation.num_variations == EMBEDDED_VARIATION_DEFAULTS["num_variations"]
    assert variation.color_transfer == EMBEDDED_VARIATION_DEFAULTS["color_transfer"]
    assert variation.eta == (1.0 if EMBEDDED_VARIATION_DEFAULTS["stochastic"] else 0.0)
    assert variation.num_inference_steps == 8  # an explicit option wins
    assert next(variation.adapter.pipeline.unet.parameters()).dtype == torch.float32

    first = variation.generate(images, [0, 1, 2, 3])
    again = hbg.ImageVariation.embedded(num_inference_steps=8).generate(images, [0, 1, 2, 3])
    assert len(first) == 4 * variation.num_variations
    assert all(image.size == (16, 16) and image.mode == "RGB" for image in first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other_seed = hbg.ImageVariation.embedded(num_inference_steps=8, seed=7).generate(images, [0, 1, 2, 3])
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, other_seed))


def test_embedded_variations_remove_a_badnets_patch_and_keep_the_digit(digits):
    """The point of the model: the 3x3 patch is gone, the digit is still there."""
    rows = digits["test"].select(range(16))
    clean = [np.asarray(image, dtype=np.float32) for image in rows["image"]]
    attack = hbg.BadNets()
    poisoned = [attack(image, i) for i, image in enumerate(rows["image"])]
    variation = hbg.ImageVariation.embedded(num_variations=1, num_inference_steps=12)
    varied = [np.asarray(image, dtype=np.float32) for image in variation.generate(poisoned, list(range(16)))]
    patch = (slice(13, 16), slice(13, 16))
    poisoned_error = np.mean([np.abs(np.asarray(p, dtype=np.float32)[patch] - c[patch]).mean()
                              for p, c in zip(poisoned, clean)])
    varied_error = np.mean([np.abs(v[patch] - c[patch]).mean() for v, c in zip(varied, clean)])
    assert varied_error < 0.25 * poisoned_error
    # the variation stays close to its source digit: nearer to it than to other digits
    distances = np.array([[np.abs(v - c).mean() for c in clean] for v in varied])
    assert (distances.argmin(axis=1) == np.arange(16)).mean() >= 0.75


def test_recipe_trains_a_few_steps_and_writes_loadable_weights(tmp_path):
    recipe = _load_recipe()
    out = tmp_path / "ddpm"
    recipe.main(["--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "8", "--block_out_channels",
                 "16,32", "--warmup_steps", "1", "--log_every", "1"])
    record = json.loads((out / "training_args.json").read_text())
    assert record["max_steps"] == 3 and np.isfinite(record["final_loss"])
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as weights:
        assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"F16"}
    variation = hbg.ImageVariation.from_pretrained(out, dtype=torch.float32, strength=0.5, num_inference_steps=4)
    image = load_digits_dataset()["train"][0]["image"]
    (result,) = variation.generate([image], [0])
    assert result.size == (16, 16)


def test_recipe_help_and_bad_options(capsys):
    recipe = _load_recipe()
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--help"])
    assert exit_info.value.code == 0
    assert "--max_steps" in capsys.readouterr().out
    with pytest.raises(ValueError, match="ema_decay"):
        recipe.main(["--output_dir", "unused", "--ema_decay", "1.5"])
