"""A quiet command line: the README's first command prints its stages and its table, not the libraries' chatter."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_prints_under_60_lines(tmp_path):
    """`backdoor-guard demo` as a user runs it (a real process, the default settings): under 60 lines.

    A progress bar redrawn with carriage returns is one line on a terminal, so lines are
    counted by their newlines.
    """
    run = subprocess.run([sys.executable, "-m", "hf_backdoor_guard.cli", "demo", "--output-dir",
                          str(tmp_path / "demo")], capture_output=True, timeout=1200)
    # bytes: text mode would turn every carriage return of a progress bar into a new line
    stdout, stderr = run.stdout.decode(), run.stderr.decode()
    output = stdout + stderr
    assert run.returncode == 0, output[-3000:]
    assert output.count("\n") < 60, output
    for stage in ("data", "teacher", "variations", "detection", "student", "evaluation"):
        assert f"Stage {stage}: done in" in output
    assert "student_cleaned" in stdout and "ASR" in stdout  # the table
    # what it printed before: a metrics line per epoch, a bar per checkpoint and per weight load
    assert "'loss'" not in output and "Writing model shards" not in output and "Loading weights" not in output


def test_quiet_libraries_restores_the_libraries_settings():
    import datasets
    import diffusers
    import transformers

    from hf_backdoor_guard.runtime.console import is_quiet, quiet_libraries

    before = (transformers.logging.get_verbosity(), datasets.logging.get_verbosity(),
              diffusers.logging.get_verbosity(), datasets.is_progress_bar_enabled(),
              transformers.logging.is_progress_bar_enabled())
    with quiet_libraries():
        assert is_quiet()
        assert transformers.logging.get_verbosity() == transformers.logging.ERROR
        assert not datasets.is_progress_bar_enabled() and not transformers.logging.is_progress_bar_enabled()
    assert not is_quiet()
    assert (transformers.logging.get_verbosity(), datasets.logging.get_verbosity(), diffusers.logging.get_verbosity(),
            datasets.is_progress_bar_enabled(), transformers.logging.is_progress_bar_enabled()) == before
    with quiet_libraries(False):  # -v: nothing changes
        assert not is_quiet() and transformers.logging.get_verbosity() == before[0]


def test_a_quiet_trainer_keeps_its_bar_and_drops_the_metrics_lines(tmp_path):
    from transformers.trainer_callback import ProgressCallback

    from hf_backdoor_guard.runtime.console import QuietProgressCallback, quiet_libraries
    from hf_backdoor_guard.pipeline import build_classifier
    from hf_backdoor_guard.pipeline.stages import training_arguments
    from hf_backdoor_guard.training.classifier import ImageClassifierTrainer

    model, processor = build_classifier("small-resnet", 3, seed=0)
    args = training_arguments(tmp_path, seed=0, epochs=1)

    def progress(trainer):
        return [type(callback) for callback in trainer.callback_handler.callbacks
                if isinstance(callback, ProgressCallback)]

    assert progress(ImageClassifierTrainer(model=model, args=args, processing_class=processor)) == [ProgressCallback]
    with quiet_libraries():
        quiet = ImageClassifierTrainer(model=model, args=args, processing_class=processor)
    assert progress(quiet) == [QuietProgressCallback]
