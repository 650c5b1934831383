"""The `backdoor-guard` command line: `defend`'s flags and config file, parsed without heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pathlib import Path

from hf_backdoor_guard.cli import build_parser, defend_config, main, parse_args
from hf_backdoor_guard.pipeline.config import DEFAULT_DIFFUSION_MODEL, DefendConfig


def _config(argv: list[str]) -> DefendConfig:
    return defend_config(build_parser().parse_args(argv))


def test_defend_flags_of_the_issue():
    config = _config(["defend", "--dataset_name", "imagefolder", "--data_dir", "D", "--train_split", "tr",
                      "--eval-split", "te", "--image_column_name", "img", "--label-column-name", "y",
                      "--model_name_or_path", "resnet-50", "--diffusion-model", "embedded", "--num-train-epochs", "3",
                      "--seed", "4", "--output-dir", "O", "--push-to-hub", "me/robust", "--image_mean", "0.5", "0.5",
                      "0.5", "--variation_options", '{"num_variations": 2}', "--attack", "badnets:size=2"])
    assert (config.dataset_name, config.data_dir, config.train_split, config.eval_split) == ("imagefolder", "D", "tr",
                                                                                            "te")
    assert (config.image_column_name, config.label_column_name, config.model_name_or_path) == ("img", "y", "resnet-50")
    assert (config.diffusion_model, config.num_train_epochs, config.seed) == ("embedded", 3.0, 4)
    assert (config.output_dir, config.push_to_hub, config.image_mean) == ("O", "me/robust", [0.5, 0.5, 0.5])
    assert config.variation_options == {"num_variations": 2} and config.attack_name == "badnets"
    defaults = _config(["defend", "--dataset_name", "d"])
    assert defaults.diffusion_model == DEFAULT_DIFFUSION_MODEL and defaults.attack is None


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset_name: imagefolder\ndata-dir: D\nnum_train_epochs: 5\nattack: badnets\naugment: true\n"
                    "variation_options:\n  num_variations: 2\n")
    config = defend_config(parse_args(["defend", "--config", str(path), "--num-train-epochs", "7", "--augment",
                                       "false"]))
    assert (config.dataset_name, config.data_dir, config.num_train_epochs) == ("imagefolder", "D", 7.0)
    assert config.attack == "badnets" and config.variation_options == {"num_variations": 2} and not config.augment
    assert defend_config(parse_args(["defend", "--config", str(path)])).augment


def test_defend_demo_and_recipes_share_one_set_of_option_names():
    """The data, model and attack options are one dataclass set: defend's config holds every field of each, the
    demo's preset names only defend's options, and the recipes' scripts parse the same classes."""
    import dataclasses

    from hf_backdoor_guard.arguments import DataArguments, ModelArguments, PoisonArguments
    from hf_backdoor_guard.benchmark.demo import DemoSettings

    defend = {f.name for f in dataclasses.fields(DefendConfig)}
    for group in (DataArguments, ModelArguments, PoisonArguments):
        assert issubclass(DefendConfig, group) and {f.name for f in dataclasses.fields(group)} <= defend
    assert set(DemoSettings().defend_options()) <= defend
    recipes = (Path(__file__).parents[1] / "recipes" / "recipe_arguments.py").read_text()
    assert "from hf_backdoor_guard.arguments import" in recipes and "class DataArguments" not in recipes


def test_old_option_names_are_told_their_new_name(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("dataset: imagefolder\nmax_train_rows: 40\n")
    with pytest.raises(ValueError, match=r"dataset -> dataset_name, max_train_rows -> max_train_samples"):
        DefendConfig.from_sources(path)
    assert main(["defend", "--config", str(path)]) == 2


@pytest.mark.parametrize("text, words", [
    ("epochs: 3\n", "unknown option(s) ['epochs']"),
    ("- a\n- b\n", "must hold a mapping"),
    ("alpha: 2\n", "alpha must lie in [0, 1]"),
    ("attack: trojan\n", "trojan"),
    ("attack_options: {size: 3}\n", "attack_options -> attack (a spec"),
    ("attack: 'badnets:size=x,'\n", "BadNets size must be an int"),
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
    # transformers' HfArgumentParser is the one front end of the options; it loads neither torch nor a model class.
    code = ("import sys; from hf_backdoor_guard.cli import build_parser; build_parser().parse_args(['defend', "
            "'--dataset_name', 'd']); print(sorted(m for m in ('torch', 'datasets', 'diffusers', "
            "'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
