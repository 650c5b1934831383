"""Fault injection: a publish killed with SIGKILL half-way through staging.

A real subprocess publishes into a folder that already holds an earlier publish and a
user's files. A test-only hook in that subprocess (``HBG_PAUSE_AT``, set up in the
``__main__`` block below, not in the library) makes it stop at a chosen point and say
so; the test then kills it with SIGKILL, publishes again into the same folder, and
checks that the result equals an uninterrupted publish file for file, byte for byte,
and that the user's files are untouched. While the killed publish holds the folder,
a second publish is refused with a message naming its process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

METRICS_V1 = {"badnets": {"clean_accuracy": 0.9, "attack_success_rate": 0.1, "robust_accuracy": 0.8}}
METRICS_V2 = {"badnets": {"clean_accuracy": 0.93, "attack_success_rate": 0.01, "robust_accuracy": 0.9}}
INFO = dict(base_dataset="uoft-cs/cifar10", seed=3, diffusion_settings={"strength": 0.5})


def tiny_model_and_processor():
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=8, num_labels=3)
    return ViTForImageClassification(config).eval(), ViTImageProcessorPil(size={"height": 8, "width": 8})


def publish(folder: Path, metrics=METRICS_V2) -> Path:
    from hf_backdoor_guard.hub import publish as hub

    model, processor = tiny_model_and_processor()
    return hub.publish_model(model, "hbg/robust", metrics, processor, output_dir=folder, push=False, **INFO)


def _pause_here() -> None:
    """Tell the test where we are, then wait to be killed."""
    Path(os.environ["HBG_PAUSED_FILE"]).write_text(str(os.getpid()))
    time.sleep(300)
    raise SystemExit("not killed")


def _install_pause(point: str) -> None:
    from huggingface_hub import ModelCard

    from hf_backdoor_guard.hub import staging

    if point == "before_card":  # weights, config and processor written into the scratch folder; no card yet
        ModelCard.save = lambda self, *args, **kwargs: _pause_here()
    elif point == "mid_swap":  # the previous publish removed, two new entries moved into place, the rest not
        real_replace, moved = os.replace, []

        def replace(src, dst, **kwargs):
            real_replace(src, dst, **kwargs)
            if staging.SCRATCH in Path(src).parts:
                moved.append(dst)
                if len(moved) == 2:
                    _pause_here()

        os.replace = replace
    else:
        raise ValueError(point)


def snapshot(folder: Path) -> dict[str, bytes]:
    """What the folder holds apart from the lock files (whose holder names a process id)."""
    from hf_backdoor_guard.runtime.outputs import LOCK

    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(LOCK)}


@pytest.mark.parametrize("point", ["before_card", "mid_swap"])
def test_a_publish_killed_mid_staging_is_redone_exactly_and_keeps_the_users_files(tmp_path, point):
    from hf_backdoor_guard.hub import publish as hub
    from hf_backdoor_guard.runtime.outputs import MARKER, recorded_outputs

    folder = tmp_path / "proj"
    publish(folder, METRICS_V1)  # an earlier publish whose files the next one replaces
    (folder / "notes.txt").write_text("mine")
    (folder / "mine").mkdir()
    (folder / "mine" / "plot.png").write_bytes(b"\x89PNG")

    paused = tmp_path / "paused"
    env = {**os.environ, "HBG_PAUSE_AT": point, "HBG_PAUSED_FILE": str(paused), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, __file__, str(folder)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert child.poll() is None, f"the publish ended before the pause point:\n{child.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the publish never reached the pause point"
            time.sleep(0.05)
        # While it holds the folder, another publish is refused and names it.
        with pytest.raises(RuntimeError, match=f"in use by another publish \\(process {child.pid} "):
            publish(folder)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert (folder / "notes.txt").read_text() == "mine" and (folder / "mine" / "plot.png").read_bytes() == b"\x89PNG"
    publish(folder)  # the rerun, into the same folder
    reference = publish(tmp_path / "uninterrupted")

    got, want = snapshot(folder), snapshot(reference)
    assert got.pop("notes.txt") == b"mine" and got.pop("mine/plot.png") == b"\x89PNG"
    got_marker, want_marker = got.pop(MARKER), want.pop(MARKER)
    assert got == want  # same files, same bytes: nothing left over from the killed run
    assert sorted(recorded_outputs(folder)) == sorted(recorded_outputs(reference)), (got_marker, want_marker)
    assert hub.staged_files(folder) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]


if __name__ == "__main__":  # the publish the test kills
    import torch

    torch.set_num_threads(1)
    _install_pause(os.environ["HBG_PAUSE_AT"])
    publish(Path(sys.argv[1]))
    raise SystemExit("the publish finished although it should have paused")
