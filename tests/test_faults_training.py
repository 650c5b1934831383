"""Fault injection: a training process SIGKILLed while writing a checkpoint resumes to the uninterrupted result.

The killed run is a real process (tests/training_fault_script.py's ``main``, forked so
that it need not import torch and transformers again) that kills itself with SIGKILL
halfway through writing checkpoint-4: no ``finally``, no atexit, nothing flushed beyond
what was on disk. The rerun asks for ``resume_from_checkpoint=True``; transformers
alone would pick the half-written checkpoint-4 and fail.
"""

import logging
import multiprocessing
import signal

import pytest
import torch
import training_fault_script
from training_fault_script import KILL_STEP, build_trainer

from hf_backdoor_guard.training.checkpoints import checkpoint_problem


def _weights(trainer):
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    results = {}
    for kind in ("distill", "classifier"):
        trainer = build_trainer(str(tmp_path_factory.mktemp(f"full-{kind}")), kind)
        trainer.train()
        results[kind] = _weights(trainer)
    return results


@pytest.mark.parametrize("kind, kill", [("distill", "weights"), ("classifier", "optimizer")])
def test_kill_while_writing_a_checkpoint_then_resume(tmp_path, uninterrupted, caplog, kind, kill):
    output_dir = tmp_path / "run"
    killed = multiprocessing.get_context("fork").Process(target=training_fault_script.main,
                                                         args=(str(output_dir), kind, kill))
    killed.start()
    killed.join(timeout=300)
    assert killed.exitcode == -signal.SIGKILL  # the fault really happened
    half_written = output_dir / f"checkpoint-{KILL_STEP}"
    assert half_written.is_dir() and not (half_written / "trainer_state.json").exists()
    assert checkpoint_problem(half_written) is not None
    assert checkpoint_problem(output_dir / "checkpoint-2") is None

    with caplog.at_level(logging.WARNING, logger="hf_backdoor_guard.training.checkpoints"):
        resumed = build_trainer(str(output_dir), kind)
        resumed.train(resume_from_checkpoint=True)
    assert any(f"checkpoint-{KILL_STEP}" in record.getMessage() and "incomplete" in record.getMessage()
               for record in caplog.records)
    assert resumed.state.global_step == 6
    expected = uninterrupted[kind]
    assert expected.keys() == _weights(resumed).keys()
    for name, value in _weights(resumed).items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
    # the rerun rewrote checkpoint-4 completely
    assert checkpoint_problem(half_written) is None
