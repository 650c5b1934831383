"""Resuming our Trainers from checkpoints: only complete checkpoints, with ViT's renamed weights intact.

Two things ``transformers.Trainer`` gets wrong for this project, fixed here for
:class:`~hf_backdoor_guard.training.classifier.ImageClassifierTrainer` and
:class:`~hf_backdoor_guard.DistillationTrainer`:

* ``train(resume_from_checkpoint=True)`` takes the checkpoint with the highest step,
  even one that a kill left half-written, and then fails. Here it takes the newest
  *complete* one (see :func:`checkpoint_problem`) and logs each newer one it skipped.
* The Trainer reloads weights with a raw, non-strict ``load_state_dict``, which
  silently skips weights that transformers 5 renames in memory (ViT). Here they are
  reloaded through ``from_pretrained``; this needs two private Trainer methods, kept
  in :class:`CheckpointReloadMixin` only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
SAFE_WEIGHTS = ("model.safetensors", "adapter_model.safetensors")
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_FILE = "scheduler.pt"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def _safetensors_problem(path: str) -> str | None:
    from safetensors import safe_open

    try:
        # safe_open checks that the header parses and that the tensors cover the whole file,
        # so a file cut short anywhere is refused; no tensor is read.
        with safe_open(path, framework="pt"):
            pass
    except Exception as error:  # noqa: BLE001 - any failure means the file is unusable
        return f"{os.path.basename(path)} is not a readable safetensors file ({error})"
    return None


def _torch_archive_problem(path: str) -> str | None:
    # torch.save writes a zip archive whose directory sits at the very end: a file cut short
    # has none. Checked without unpickling anything.
    try:
        with zipfile.ZipFile(path) as archive:
            size = os.path.getsize(path)
            if any(info.header_offset + info.compress_size > size for info in archive.infolist()):
                raise zipfile.BadZipFile("an entry runs past the end of the file")
    except (OSError, zipfile.BadZipFile) as error:
        return f"{os.path.basename(path)} is incomplete ({error})"
    return None


def _weights_problem(folder: str) -> str | None:
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return f"{SAFE_WEIGHTS_INDEX} is unreadable ({error})"
        for shard in shards:
            if not os.path.isfile(os.path.join(folder, shard)):
                return f"weight shard {shard} named in {SAFE_WEIGHTS_INDEX} is missing"
            problem = _safetensors_problem(os.path.join(folder, shard))
            if problem:
                return problem
        return None
    for name in SAFE_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return _safetensors_problem(os.path.join(folder, name))
    return f"no safetensors weights ({' or '.join(SAFE_WEIGHTS + (SAFE_WEIGHTS_INDEX,))})"


def checkpoint_problem(folder: str | os.PathLike, *, need_optimizer: bool = True,
                       check_weights: bool = True) -> str | None:
    """Why ``folder`` cannot be resumed from, or ``None`` when it is complete.

    A checkpoint is complete when:

    * ``trainer_state.json`` parses as JSON with an integer ``global_step`` (the Trainer
      writes it last, so a kill during any earlier file leaves it missing);
    * with ``check_weights``: the weights are safetensors that open and cover their
      whole file (``model.safetensors``, ``adapter_model.safetensors``, or every shard
      named in ``model.safetensors.index.json``);
    * with ``need_optimizer`` (the Trainer restores them when present; off for
      ``save_only_model``): ``optimizer.pt`` (or ``.bin``) and ``scheduler.pt`` exist;
    * every ``torch.save`` archive present (optimizer, scheduler, ``scaler.pt``,
      ``rng_state*.pth``) has its zip directory, i.e. was written to the end.

    DeepSpeed and FSDP keep weights and optimizer states in their own layout: pass
    ``check_weights=False, need_optimizer=False`` for those, which checks the state file
    and the archives only.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return "it is not a folder"
    state_file = os.path.join(folder, TRAINER_STATE)
    try:
        with open(state_file, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return f"{TRAINER_STATE} is missing"
    except (OSError, ValueError) as error:
        return f"{TRAINER_STATE} is unreadable ({error})"
    if not isinstance(state, dict) or isinstance(state.get("global_step"), bool) or not isinstance(
            state.get("global_step"), int):
        return f"{TRAINER_STATE} has no integer global_step"
    if check_weights:
        problem = _weights_problem(folder)
        if problem:
            return problem
    names = set(os.listdir(folder))
    if need_optimizer:
        if not names.intersection(OPTIMIZER_FILES):
            return f"{' / '.join(OPTIMIZER_FILES)} is missing"
        if SCHEDULER_FILE not in names:
            return f"{SCHEDULER_FILE} is missing"
    for name in sorted(names):
        if name in OPTIMIZER_FILES + (SCHEDULER_FILE, "scaler.pt") or re.fullmatch(r"rng_state.*\.pth", name):
            problem = _torch_archive_problem(os.path.join(folder, name))
            if problem:
                return problem
    return None


def _checkpoints_newest_first(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_NAME.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str | os.PathLike, *, need_optimizer: bool = True,
                             check_weights: bool = True) -> str | None:
    """The newest ``checkpoint-N`` folder of ``output_dir`` that :func:`checkpoint_problem` accepts.

    Newer, incomplete ones (a kill while the Trainer was writing them) are skipped with a
    warning that names them and what is wrong; they are left on disk untouched. Returns
    ``None`` when there is no complete checkpoint.
    """
    for path in _checkpoints_newest_first(os.fspath(output_dir)):
        problem = checkpoint_problem(path, need_optimizer=need_optimizer, check_weights=check_weights)
        if problem is None:
            return path
        logger.warning("Skipping incomplete checkpoint %s: %s.", path, problem)
    return None


def _resume_checks(trainer) -> dict:
    # DeepSpeed/FSDP store weights and optimizer in their own files; save_only_model stores no optimizer.
    plain = not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)
    return {"check_weights": plain, "need_optimizer": plain and not trainer.args.save_only_model}


class CheckpointReloadMixin:
    """For our ``Trainer`` subclasses: resume from complete checkpoints, reload renamed weights.

    ``train(resume_from_checkpoint=True)`` resumes from :func:`last_complete_checkpoint`;
    an explicit checkpoint path that is incomplete is refused before any work, with what
    is wrong with it.

    Reloading: transformers 5 renames some models' parameters in memory (ViT:
    ``vit.encoder.layer.N`` became ``vit.layers.N``) and converts them back in
    ``save_pretrained``, but ``Trainer`` reloads checkpoints (``resume_from_checkpoint``,
    ``load_best_model_at_end``) with a raw, non-strict ``load_state_dict``: every renamed
    weight is silently skipped and training resumes from the initial weights. Here the
    checkpoint is loaded with ``from_pretrained``, which converts, and copied strictly.
    DeepSpeed, FSDP, PEFT and SageMaker keep the Trainer's own path.
    """

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir, **_resume_checks(self))
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} has no complete checkpoint (see the "
                    "warnings above for incomplete ones): train without resume_from_checkpoint to start over."
                )
            logger.info("Resuming from %s, the newest complete checkpoint.", found)
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            problem = checkpoint_problem(resume_from_checkpoint, **_resume_checks(self))
            if problem:
                raise ValueError(
                    f"resume_from_checkpoint={os.fspath(resume_from_checkpoint)!r} cannot be resumed from: {problem}. "
                    "Pass an older checkpoint, or resume_from_checkpoint=True for the newest complete one."
                )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- the only private Trainer API this project overrides ---------------------------------------
    # transformers has no public hook for how a checkpoint's weights are reloaded. These two
    # overrides are what fixes the silent ViT reload; tests/test_checkpoints.py fails, naming the
    # method, if an upgrade removes or changes either (PRIVATE_TRAINER_METHODS).
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._reload_plain_checkpoint(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not self._reload_plain_checkpoint(self.state.best_model_checkpoint):
            super()._load_best_model()

    def _reload_plain_checkpoint(self, folder: str | None, model=None) -> bool:
        from transformers import PreTrainedModel

        if not folder or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return False
        if not any(os.path.isfile(os.path.join(folder, name)) for name in ("model.safetensors", SAFE_WEIGHTS_INDEX)):
            return False
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(target, PreTrainedModel) or hasattr(target, "peft_config"):
            return False
        logger.info("Loading model weights from %s", folder)
        loaded = type(target).from_pretrained(folder, config=target.config, use_safetensors=True,
                                              trust_remote_code=False)
        target.load_state_dict(loaded.state_dict(), strict=True)
        return True


# Private transformers.Trainer methods overridden above, with the parameters the overrides expect.
PRIVATE_TRAINER_METHODS = {
    "_load_from_checkpoint": ("self", "resume_from_checkpoint", "model"),
    "_load_best_model": ("self",),
}


__all__ = ["checkpoint_problem", "last_complete_checkpoint", "CheckpointReloadMixin", "PRIVATE_TRAINER_METHODS"]
