"""Benchmark worlds: the demo and compare run in a world chosen by --benchmark, with the same method settings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_fashion_mnist import _fake_arrays, _write_folder  # noqa: E402
from tiny_pipelines import build_ddim  # noqa: E402

from hf_backdoor_guard.benchmark import WORLDS, World, world  # noqa: E402
from hf_backdoor_guard.cli import build_parser, main  # noqa: E402

QUICK = dict(max_train_samples=40, max_eval_samples=20, num_train_epochs=1, student_epochs=1,
             variation_options={"num_inference_steps": 4, "num_variations": 1})


def test_both_worlds_are_registered_and_offered_by_the_cli():
    assert WORLDS.names()[:2] == ["digits", "fashion-mnist"]
    digits, fashion = world("digits"), world("fashion-mnist")
    assert digits.diffusion_model == "embedded" and fashion.diffusion_model == "embedded-fashion-mnist"
    assert fashion.attacks is digits.attacks  # frozen: the digits' settings, unchanged, before any Fashion-MNIST run
    for command in ("demo", "compare"):
        assert build_parser().parse_args([command, "--benchmark", "fashion-mnist"]).benchmark == "fashion-mnist"
        assert build_parser().parse_args([command]).benchmark == "digits"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--benchmark", "cifar10"])


def test_a_world_whose_shipped_model_is_missing_is_refused_before_its_data_loads(tmp_path, monkeypatch, caplog):
    from hf_backdoor_guard import data, embedded

    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "fashion-mnist", tmp_path / "not-shipped")

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the diffusion model was checked")

    monkeypatch.setattr(data, "load_fashion_mnist", no_data)
    for command in ("demo", "compare"):
        out = tmp_path / command
        assert main([command, "--benchmark", "fashion-mnist", "--output-dir", str(out)]) == 2
        assert "The shipped diffusion model 'fashion-mnist' is not in this copy of the package" in caplog.text
        assert "--benchmark fashion-mnist" in caplog.text and not out.exists()


@pytest.fixture
def toy_world(tmp_path):
    """A world of tiny Fashion-MNIST-format files and a tiny DDIM model, both made here (a new world is one
    World and one registration)."""
    from hf_backdoor_guard.data import load_fashion_mnist

    folder = _write_folder(tmp_path / "idx", _fake_arrays(train_rows=200, test_rows=60), gz=True)
    pipeline, _ = build_ddim()
    pipeline.save_pretrained(tmp_path / "ddim")
    toy = World(name="toy-fashion", description="tiny Fashion-MNIST-format files",
                load=lambda: load_fashion_mnist(folder, pretrain_size=60, train_size=100, test_size=40),
                diffusion_model=str(tmp_path / "ddim"), attacks=world("digits").attacks)
    WORLDS.register(toy)
    yield toy
    WORLDS.unregister(toy.name)


def test_the_demo_runs_in_another_world(tmp_path, toy_world):
    from hf_backdoor_guard.benchmark.demo import run_demo

    out = tmp_path / "demo"
    result = run_demo("badnets", out, seed=0, benchmark="toy-fashion", **QUICK)
    assert result["data"] == "tiny Fashion-MNIST-format files" and result["settings"]["benchmark"] == "toy-fashion"
    assert result["rows"]["train"] == 40 and result["rows"]["test"] == 20
    for model in ("teacher", "student", "student_cleaned", "variations_ce"):
        values = result["models"][model]
        assert all(0.0 <= values[key] <= 1.0 for key in ("clean_accuracy", "attack_success_rate"))
    assert "tiny Fashion-MNIST-format files" in (out / "report.md").read_text()
    from datasets import load_from_disk

    images = load_from_disk(str(out / "stages" / "data"))["train"]["image"]
    assert images[0].size == (28, 28) and np.asarray(images[0]).shape == (28, 28, 3)
