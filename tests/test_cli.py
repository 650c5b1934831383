"""The `backdoor-guard` command line: `defend`'s flags and config file, parsed without heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_backdoor_guard.cli import build_parser, defend_config
from hf_backdoor_guard.pipeline.config import DEFAULT_DIFFUSION_MODEL, DefendConfig


def _config(argv: list[str]) -> DefendConfig:
    return defend_config(build_parser().parse_args(argv))


def test_defend_flags_of_the_issue():
    config = _config(["defend", "--dataset", "imagefolder", "--data-dir", "D", "--split", "tr", "--eval-split", "te",
                      "--image-column", "img", "--label-column", "y", "--model", "resnet-50",
                      "--diffusion-model", "embedded", "--num-train-epochs", "3", "--seed", "4", "--output-dir", "O",
                      "--push-to-hub", "me/robust"])
    assert (config.dataset, config.data_dir, config.split, config.eval_split) == ("imagefolder", "D", "tr", "te")
    assert (config.image_column, config.label_column, config.model) == ("img", "y", "resnet-50")
    assert (config.diffusion_model, config.num_train_epochs, config.seed) == ("embedded", 3.0, 4)
    assert (config.output_dir, config.push_to_hub) == ("O", "me/robust")
    defaults = _config(["defend", "--dataset", "d"])
    assert defaults.diffusion_model == DEFAULT_DIFFUSION_MODEL and defaults.attack is None


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: imagefolder\ndata-dir: D\nnum_train_epochs: 5\nattack: badnets\n"
                    "variation_options:\n  num_variations: 2\n")
    config = _config(["defend", "--config", str(path), "--num-train-epochs", "7", "--no-augment"])
    assert (config.dataset, config.data_dir, config.num_train_epochs) == ("imagefolder", "D", 7.0)
    assert config.attack == "badnets" and config.variation_options == {"num_variations": 2} and not config.augment


@pytest.mark.parametrize("text, words", [
    ("epochs: 3\n", "Unknown option(s) ['epochs']"),
    ("- a\n- b\n", "must hold a mapping"),
    ("alpha: 2\n", "alpha must lie in [0, 1]"),
    ("attack: trojan\n", "trojan"),
    ("attack_options: {size: 3}\n", "need --attack"),
])
def test_bad_config_files(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        DefendConfig.from_sources(path)


def test_demo_flags():
    args = build_parser().parse_args(["demo", "--attack", "all", "--output-dir", "d", "--seed", "4", "--overwrite"])
    assert (args.attack, args.output_dir, args.seed, args.overwrite) == ("all", "d", 4, True)


def test_parsing_imports_no_heavy_library():
    code = ("import sys; from hf_backdoor_guard.cli import build_parser; build_parser().parse_args(['defend', "
            "'--dataset', 'd']); print(sorted(m for m in ('torch', 'transformers', 'datasets', 'diffusers', "
            "'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
