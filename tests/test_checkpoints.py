"""Resuming only from complete checkpoints, on real checkpoint folders damaged the way a kill leaves them."""

import inspect
import logging
import shutil

import pytest
import torch
from training_fault_script import build_trainer
from transformers import Trainer

from hf_backdoor_guard.training.checkpoints import PRIVATE_TRAINER_METHODS, checkpoint_problem, last_complete_checkpoint


def _weights(trainer):
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A real 6-step run of each trainer with checkpoints 2, 4 and 6, and its final weights."""
    runs = {}
    for kind in ("classifier", "distill"):
        output_dir = tmp_path_factory.mktemp(f"finished-{kind}")
        trainer = build_trainer(str(output_dir), kind)
        trainer.train()
        runs[kind] = (output_dir, _weights(trainer))
    return runs


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "trainer_state.json missing": (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    "trainer_state.json cut short": (lambda c: _truncate(c / "trainer_state.json"), "trainer_state.json"),
    "weights cut short": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors"),
    "weights missing": (lambda c: (c / "model.safetensors").unlink(), "no safetensors weights"),
    "optimizer missing": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt"),
    "optimizer cut short": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt is incomplete"),
    "scheduler missing": (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    "rng state cut short": (lambda c: _truncate(c / "rng_state.pth"), "rng_state.pth is incomplete"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_checkpoint_problem_names_what_is_incomplete(finished, tmp_path, damage):
    source, _ = finished["classifier"]
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(source / "checkpoint-4", checkpoint)
    assert checkpoint_problem(checkpoint) is None
    damage_fn, expected = DAMAGE[damage]
    damage_fn(checkpoint)
    problem = checkpoint_problem(checkpoint)
    assert problem is not None and expected in problem


def test_checkpoint_without_optimizer_and_sharded_weights(finished, tmp_path):
    source, _ = finished["classifier"]
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(source / "checkpoint-2", checkpoint)
    for name in ("optimizer.pt", "scheduler.pt"):
        (checkpoint / name).unlink()
    assert "optimizer" in checkpoint_problem(checkpoint)
    assert checkpoint_problem(checkpoint, need_optimizer=False) is None  # a save_only_model checkpoint

    from transformers import ViTForImageClassification

    (checkpoint / "model.safetensors").unlink()
    ViTForImageClassification.from_pretrained(source / "checkpoint-2").save_pretrained(
        checkpoint, max_shard_size="40KB")
    shards = sorted(checkpoint.glob("model-*.safetensors"))
    assert len(shards) > 1 and (checkpoint / "model.safetensors.index.json").is_file()
    assert checkpoint_problem(checkpoint, need_optimizer=False) is None
    shards[-1].unlink()
    assert shards[-1].name in checkpoint_problem(checkpoint, need_optimizer=False)
    assert checkpoint_problem(tmp_path / "nowhere") == "it is not a folder"
    assert last_complete_checkpoint(tmp_path / "nowhere") is None


@pytest.mark.parametrize("kind, damage", [("classifier", "trainer_state.json missing"),
                                          ("distill", "weights cut short")])
def test_resume_true_skips_the_half_written_checkpoint(finished, tmp_path, caplog, kind, damage):
    source, expected = finished[kind]
    output_dir = tmp_path / "run"
    for step in (2, 4):
        shutil.copytree(source / f"checkpoint-{step}", output_dir / f"checkpoint-{step}")
    DAMAGE[damage][0](output_dir / "checkpoint-4")
    assert last_complete_checkpoint(output_dir) == str(output_dir / "checkpoint-2")

    trainer = build_trainer(str(output_dir), kind)
    with caplog.at_level(logging.WARNING, logger="hf_backdoor_guard.training.checkpoints"):
        trainer.train(resume_from_checkpoint=True)
    skipped = [r.getMessage() for r in caplog.records if "Skipping incomplete checkpoint" in r.getMessage()]
    assert skipped and str(output_dir / "checkpoint-4") in skipped[0]
    assert trainer.state.global_step == 6
    for name, value in _weights(trainer).items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
    assert (output_dir / "checkpoint-4" / "trainer_state.json").is_file()  # rewritten whole by the rerun


def test_nothing_to_resume_or_an_incomplete_path_is_refused_before_training(finished, tmp_path):
    source, _ = finished["classifier"]
    output_dir = tmp_path / "run"
    shutil.copytree(source / "checkpoint-2", output_dir / "checkpoint-2")
    (output_dir / "checkpoint-2" / "trainer_state.json").unlink()
    trainer = build_trainer(str(output_dir), "classifier")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="trainer_state.json is missing"):
        trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-2"))
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("name", sorted(PRIVATE_TRAINER_METHODS))
def test_private_trainer_methods_we_override_still_exist(name):
    """CheckpointReloadMixin overrides these to reload ViT's renamed weights; an upgrade must not drop them silently."""
    method = getattr(Trainer, name, None)
    assert callable(method), (
        f"transformers.Trainer.{name} is gone: CheckpointReloadMixin.{name} (hf_backdoor_guard/training/checkpoints.py) "
        "no longer runs, and renamed weights (ViT) may again be skipped silently when reloading checkpoints."
    )
    parameters = tuple(inspect.signature(method).parameters)
    assert parameters == PRIVATE_TRAINER_METHODS[name], (
        f"transformers.Trainer.{name} now takes {parameters}, CheckpointReloadMixin.{name} expects "
        f"{PRIVATE_TRAINER_METHODS[name]}: update hf_backdoor_guard/training/checkpoints.py."
    )
