"""A tiny training run that SIGKILLs itself while writing a checkpoint (for tests/test_faults_training.py).

    python tests/training_fault_script.py OUTPUT_DIR {distill,classifier} {weights,optimizer,none}

Trains 6 steps with a checkpoint every 2. With ``weights`` or ``optimizer`` the process
kills itself with SIGKILL (no cleanup, no exception handlers) in the middle of writing
checkpoint-4: after half of ``model.safetensors`` or of ``optimizer.pt`` is on disk. The
kill is injected by wrapping the two functions the Trainer writes those files with.
``build_trainer`` is also imported by the test, so the rerun and the uninterrupted
reference are set up exactly alike.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

KILL_STEP = 4


def build_trainer(output_dir: str, kind: str):
    """The trainer of this run: a tiny ViT student, no augmentation, 6 steps, checkpoints every 2."""
    from tiny_classifiers import random_image_dataset, tiny_vit
    from transformers import TrainingArguments

    from hf_backdoor_guard import DistillationTrainer, DistillationTrainingArguments
    from hf_backdoor_guard.training.classifier import build_classifier_trainer

    settings = dict(output_dir=output_dir, use_cpu=True, report_to=[], per_device_train_batch_size=4, max_steps=6,
                    save_strategy="steps", save_steps=2, logging_steps=1, learning_rate=1e-2, seed=0,
                    disable_tqdm=True, dataloader_num_workers=0)
    ds = random_image_dataset(12, seed=5)
    student, processor = tiny_vit(seed=2)
    if kind == "distill":
        teacher, _ = tiny_vit(seed=1)
        args = DistillationTrainingArguments(**settings, augment=False)
        return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                   processing_class=processor)
    args = TrainingArguments(**settings, remove_unused_columns=False)
    return build_classifier_trainer(student, ds, args, processor, augment=False)


def _die_halfway(write, target_name: str):
    """Wrap ``write(obj, path, ...)``: at checkpoint-KILL_STEP, leave half of ``target_name`` and SIGKILL."""

    def wrapped(obj, path, *args, **kwargs):
        path_text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        if path_text.endswith(os.path.join(f"checkpoint-{KILL_STEP}", target_name)):
            write(obj, path, *args, **kwargs)
            data = Path(path_text).read_bytes()
            with open(path_text, "wb") as handle:  # what a kill in the middle of the write leaves behind
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return write(obj, path, *args, **kwargs)

    return wrapped


def main(output_dir: str, kind: str, kill: str) -> None:
    import torch
    import transformers.modeling_utils

    torch.set_num_threads(1)
    if kill == "weights":
        transformers.modeling_utils.safe_save_file = _die_halfway(transformers.modeling_utils.safe_save_file,
                                                                  "model.safetensors")
    elif kill == "optimizer":
        torch.save = _die_halfway(torch.save, "optimizer.pt")
    build_trainer(output_dir, kind).train()


if __name__ == "__main__":
    main(*sys.argv[1:4])
