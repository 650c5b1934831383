"""`backdoor-guard defend` refuses bad input before any work, with a message naming what is wrong.

Regressions of user reports: variation options checked only inside the variations stage,
YAML 1.1 reading ``1e-3`` as a string, a key given twice in --config, a detection budget of
1, and --model / --diffusion-model folders whose weights are pickle only, whose
safetensors headers lie, or whose image processor is missing or would run code. Every
model and pipeline here is a real tiny one saved to a temporary folder; every refusal
leaves --output-dir unwritten.
"""

from __future__ import annotations

import inspect
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from digits_folder import write_digits_imagefolder  # noqa: E402
from tiny_classifiers import tiny_resnet  # noqa: E402

from hf_backdoor_guard.cli import main  # noqa: E402
from hf_backdoor_guard.pipeline.config import (STAGE_OPTIONS, DefendConfig, check_diffusion_model,  # noqa: E402
                                               read_config_file)
from hf_backdoor_guard.pipeline.models import build_classifier, check_model  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(tmp_path_factory.mktemp("digits") / "data", train_rows=60, test_rows=20,
                                    poison_rate=0)


def _defend(tmp_path, digits, *extra: str) -> int:
    # --num-train-epochs 1 keeps the code these tests guard against (which refused only mid-run) quick to fail.
    return main(["defend", "--dataset_name", "imagefolder", "--data-dir", str(digits), "--model_name_or_path", "small-resnet",
                 "--diffusion-model", "embedded", "--num-train-epochs", "1", "--output-dir", str(tmp_path / "out"),
                 *extra])


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


# --- 1. variation_options ----------------------------------------------------------------------
@pytest.mark.parametrize("options, words", [
    ("{num_variations: 0}", "variation_options['num_variations'] must be an int >= 1, got 0."),
    ("{strenght: 0.5}", "unknown variation option 'strenght'; the options are ['channels_last'"),
    ("{strength: 1.5}", "variation_options['strength'] must lie in (0, 1] (a finite number), got 1.5."),
    ("{seed: 3}", "variation_options['seed'] is set by --seed"),
    ("{revision: main}", "variation option 'revision' applies with a pipeline folder or Hub id only"),
])
def test_variation_options_are_checked_before_work(tmp_path, digits, caplog, options, words):
    assert _defend(tmp_path, digits, "--config", _config(tmp_path, f"variation_options: {options}\n")) == 2
    assert words in caplog.text
    assert not (tmp_path / "out").exists()


def test_variation_options_that_image_variation_takes_are_accepted():
    config = DefendConfig(dataset_name="x", diffusion_model="embedded", variation_options={
        "num_variations": 2, "num_inference_steps": 10, "strength": 0.6, "stochastic": True, "speed": "fast",
        "color_transfer": False, "dtype": "float32"})
    assert config.variation_options["num_variations"] == 2
    with pytest.raises(ValueError, match="variation option 'stochastic' applies with --diffusion-model embedded"):
        DefendConfig(dataset_name="x", diffusion_model="some/pipeline", variation_options={"stochastic": True})


def test_variation_option_names_are_those_image_variation_accepts():
    """The names the config accepts are read from the constructors' signatures, not guessed."""
    from hf_backdoor_guard.variations.core import ImageVariation
    from hf_backdoor_guard.variations.options import GENERIC_OPTIONS, INIT_OPTIONS, PRETRAINED_OPTIONS

    init = set(inspect.signature(ImageVariation.__init__).parameters) - {"self", "pipeline"}
    assert set(INIT_OPTIONS) == init and set(GENERIC_OPTIONS) <= init
    own = inspect.signature(ImageVariation.from_pretrained).parameters
    keywords = {name for name, p in own.items() if p.kind is p.KEYWORD_ONLY}
    assert set(PRETRAINED_OPTIONS) == keywords - {"prior"}  # prior is an ImageVariation option too


# --- 2. numbers in the config file -------------------------------------------------------------
def test_config_file_reads_exponent_floats_as_numbers(tmp_path):
    path = _config(tmp_path, "learning_rate: 1e-3\nweight_decay: 2E-4\nstudent_learning_rate: 5.0e-4\n"
                             "per_device_train_batch_size: 16\nvariation_options: {strength: 5e-1}\ndiffusion_model: embedded\n")
    values = read_config_file(path)
    assert values["learning_rate"] == 1e-3 and values["weight_decay"] == 2e-4 and values["per_device_train_batch_size"] == 16
    assert isinstance(values["per_device_train_batch_size"], int) and values["variation_options"] == {"strength": 0.5}
    config = DefendConfig.from_sources(path, dataset_name="x")
    assert (config.learning_rate, config.weight_decay, config.student_learning_rate) == (1e-3, 2e-4, 5e-4)


def test_config_file_giving_a_string_for_a_number_says_so(tmp_path, digits, caplog):
    assert _defend(tmp_path, digits, "--config", _config(tmp_path, "learning_rate: '1e-3'\n")) == 2
    assert "learning_rate must be a number, but the file gives the string '1e-3'" in caplog.text
    assert not (tmp_path / "out").exists()


# --- 3. a key given twice ----------------------------------------------------------------------
def test_config_file_with_a_duplicated_key_is_refused(tmp_path, digits, caplog):
    path = _config(tmp_path, "seed: 1\nlearning_rate: 0.01\nseed: 2\n")
    assert _defend(tmp_path, digits, "--config", path) == 2
    assert "key 'seed' is given twice (lines 1 and 3)" in caplog.text
    assert not (tmp_path / "out").exists()
    nested = _config(tmp_path, "variation_options:\n  num_variations: 1\n  num_variations: 2\n")
    with pytest.raises(ValueError, match=r"key 'num_variations' is given twice \(lines 2 and 3\)"):
        read_config_file(nested)
    merged = _config(tmp_path, "attack: badnets\nattack_options:\n  <<: {size: 2}\n  size: 3\n")
    assert read_config_file(merged)["attack_options"] == {"size": 3}  # a '<<' merge may be overridden


# --- 4. detection budget -----------------------------------------------------------------------
def test_detection_budget_of_one_is_refused(tmp_path, digits, caplog):
    assert _defend(tmp_path, digits, "--detection-budget", "1") == 2
    assert "detection_budget must lie in (0, 1)" in caplog.text and "a budget of 1 flags every row" in caplog.text
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"detection_budget must lie in \(0, 1\)"):
        DefendConfig(dataset_name="x", detection_budget=0.0)
    assert DefendConfig(dataset_name="x", detection_budget=0.2).detection_budget == 0.2


# --- 7. train_val_split ------------------------------------------------------------------------
def test_train_val_split_is_an_option_of_the_data_stage(tmp_path, digits, caplog):
    assert DefendConfig(dataset_name="x").train_val_split == 0.15
    assert "train_val_split" in STAGE_OPTIONS["data"]
    for value in ("1", "0"):
        assert _defend(tmp_path, digits, "--train-val-split", value) == 2
        assert f"train_val_split must lie in (0, 1) (a finite number), got {float(value)}." in caplog.text
    assert not (tmp_path / "out").exists()


# --- 5. --model folders ------------------------------------------------------------------------
@pytest.fixture
def model_folder(tmp_path):
    model, processor = tiny_resnet(num_labels=10)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_a_saved_model_folder_passes_the_checks(model_folder):
    check_model(model_folder, 10)


def test_model_folder_with_pickle_weights_only_is_refused(tmp_path, digits, model_folder, caplog):
    state = {name: tensor.clone() for name, tensor in tiny_resnet(num_labels=10)[0].state_dict().items()}
    (model_folder / "model.safetensors").unlink()
    torch.save(state, model_folder / "pytorch_model.bin")
    assert _defend(tmp_path, digits, "--model_name_or_path", str(model_folder)) == 2
    assert f"model '{model_folder}' holds its weights only as pickle (pytorch_model.bin)" in caplog.text
    assert "loads safetensors only" in caplog.text and "model.save_pretrained(folder)" in caplog.text
    assert not (tmp_path / "out").exists()


def test_model_folder_without_weights_is_refused_before_work(tmp_path, digits, model_folder, caplog):
    (model_folder / "model.safetensors").unlink()
    assert _defend(tmp_path, digits, "--model_name_or_path", str(model_folder)) == 2
    assert f"model '{model_folder}' holds no weights: there is no *.safetensors file" in caplog.text
    assert not (tmp_path / "out").exists()


def _lie(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-100])
    elif how == "header longer than the file":
        path.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])
    else:
        path.write_bytes(b"not a safetensors file " * 40)


@pytest.mark.parametrize("how", ["truncated", "header longer than the file", "garbage"])
def test_model_folder_with_a_lying_safetensors_header_is_refused(tmp_path, digits, model_folder, caplog, how):
    _lie(model_folder / "model.safetensors", how)
    assert _defend(tmp_path, digits, "--model_name_or_path", str(model_folder)) == 2
    assert f"{model_folder / 'model.safetensors'} is not a readable safetensors file" in caplog.text
    assert not (tmp_path / "out").exists()


def test_model_folder_without_an_image_processor_is_refused_before_work(tmp_path, digits, model_folder, caplog):
    (model_folder / "preprocessor_config.json").unlink()
    assert _defend(tmp_path, digits, "--model_name_or_path", str(model_folder)) == 2
    assert "has no image processor (there is no preprocessor_config.json)" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.fixture
def custom_code_folder(tmp_path):
    """A classifier whose processor only an auto_map class in the folder provides (as in test_trust.py)."""
    from transformers import (Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification,
                              ViTImageProcessorPil)

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=8, num_labels=10,
                                       num_register_tokens=1)
    folder = tmp_path / "custom-model"
    Dinov2WithRegistersForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 8, "width": 8}).save_pretrained(folder)
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    preprocessor.pop("image_processor_type")
    preprocessor["auto_map"] = {"AutoImageProcessor": "custom_processing.CustomImageProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    ran = tmp_path / "REMOTE-CODE-RAN"
    (folder / "custom_processing.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n"
        "from transformers import ViTImageProcessorPil as CustomImageProcessor\n"
    )
    return folder, ran


def test_model_whose_processor_needs_custom_code_is_refused_before_work(tmp_path, digits, custom_code_folder,
                                                                        caplog):
    folder, ran = custom_code_folder
    assert _defend(tmp_path, digits, "--model_name_or_path", str(folder)) == 2
    assert "its image processor is refused" in caplog.text and "would run on load" in caplog.text
    assert "custom_processing.CustomImageProcessor" in caplog.text and "trust_remote_code=False" in caplog.text
    assert "no preprocessor_config.json" not in caplog.text and "no image processor" not in caplog.text
    assert not (tmp_path / "out").exists() and not ran.exists()


def test_building_from_a_custom_code_folder_says_why_not_that_the_file_is_missing(custom_code_folder):
    """The builder's own message (used when no check ran first) named a missing preprocessor_config.json."""
    folder, ran = custom_code_folder
    with pytest.raises(ValueError) as error:
        build_classifier(folder, 10)
    assert "refused" in str(error.value) and "custom_processing.CustomImageProcessor" in str(error.value)
    assert "no image processor" not in str(error.value) and not ran.exists()


# --- 6. --diffusion-model folders --------------------------------------------------------------
def _save_pipeline(root: Path, family: str = "ddim", **save_options) -> Path:
    from tiny_pipelines import FAMILIES

    pipeline, _ = FAMILIES[family]()
    pipeline.save_pretrained(root / family, **save_options)
    return root / family


def test_saved_pipeline_folders_pass_the_checks(tmp_path):
    from hf_backdoor_guard.embedded import EMBEDDED_DIFFUSION_DIR
    from hf_backdoor_guard.pipeline.config import check_pipeline_weights

    for family in ("ddim", "sd-image-variation"):  # a diffusers UNet alone; with transformers encoders
        check_diffusion_model(DefendConfig(dataset_name="x", diffusion_model=str(_save_pipeline(tmp_path, family))))
    check_pipeline_weights(EMBEDDED_DIFFUSION_DIR)  # the shipped model, in fp16 safetensors


def test_pipeline_folder_with_pickle_weights_only_is_refused(tmp_path, digits, caplog):
    folder = _save_pipeline(tmp_path, safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert _defend(tmp_path, digits, "--diffusion-model", str(folder)) == 2
    assert (f"--diffusion-model {folder}, component 'unet' holds its weights only as pickle "
            "(diffusion_pytorch_model.bin)") in caplog.text
    assert "pipeline.save_pretrained(folder, safe_serialization=True)" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family, component, file", [
    ("ddim", "unet", "diffusion_pytorch_model.safetensors"),
    ("sd-image-variation", "image_encoder", "model.safetensors"),
])
def test_pipeline_folder_with_a_lying_safetensors_header_is_refused(tmp_path, digits, caplog, family, component,
                                                                    file):
    folder = _save_pipeline(tmp_path, family)
    _lie(folder / component / file, "truncated")
    assert _defend(tmp_path, digits, "--diffusion-model", str(folder)) == 2
    assert f"{folder / component / file} is not a readable safetensors file" in caplog.text
    assert not (tmp_path / "out").exists()


def test_pipeline_folder_missing_a_listed_component_is_refused(tmp_path):
    import shutil

    folder = _save_pipeline(tmp_path)
    shutil.rmtree(folder / "unet")
    with pytest.raises(ValueError, match="model_index.json lists the component 'unet', but there is no"):
        check_diffusion_model(DefendConfig(dataset_name="x", diffusion_model=str(folder)))


# --- the shared data and attack options ---------------------------------------------------------
def test_defend_reads_the_shared_data_and_attack_options(tmp_path, digits):
    """resize_images, subset_seed, poison_seed and an attack spec, which defend gained from the recipes'
    dataclasses, change what prepare hands the stages (no stage runs here)."""
    from hf_backdoor_guard.pipeline.defend import prepare

    def inputs(**options):
        config = DefendConfig(dataset_name="imagefolder", data_dir=str(digits), model_name_or_path="small-resnet",
                              diffusion_model="embedded", output_dir=str(tmp_path / "out"), max_train_samples=40,
                              **options)
        return prepare(config)

    plain = inputs()
    resized = inputs(resize_images=12, attack="badnets:size=2", poison_seed=5)
    assert {image.size for image in resized.train["image"]} == {(12, 12)} != {image.size for image in plain.train["image"]}
    assert resized.attack.config()["size"] == 2 and resized.poison_kwargs["seed"] == 5
    other_rows = inputs(subset_seed=7)
    assert other_rows.source_rows != plain.source_rows and len(other_rows.source_rows) == 40
