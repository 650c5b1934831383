"""DistillationTrainer, DistillationTrainingArguments and the teacher-logit cache, on tiny models."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import is_bf16_available
from datasets import Value
from tiny_classifiers import random_image_dataset, tiny_convnext, tiny_resnet, tiny_vit
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments

from hf_backdoor_guard import (
    DistillationTrainer,
    DistillationTrainingArguments,
    ImageClassificationTransform,
    precompute_teacher_logits,
)
from hf_backdoor_guard.training.distillation import distillation_loss, teacher_deepspeed_config


def make_args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], per_device_train_batch_size=4,
        per_device_eval_batch_size=8, max_steps=2, save_strategy="no", logging_steps=1, seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    settings.update(overrides)
    return DistillationTrainingArguments(**settings)


def params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def one_batch(trainer, dataset=None):
    loader = trainer.get_eval_dataloader(dataset) if dataset is not None else trainer.get_eval_dataloader()
    return next(iter(loader))


# --- arguments ------------------------------------------------------------------------------------------

def test_arguments_defaults_help_and_parsing(tmp_path):
    args = DistillationTrainingArguments(str(tmp_path))
    assert (args.alpha, args.temperature, args.augment, args.remove_unused_columns) == (0.5, 10.0, True, False)
    parser = HfArgumentParser(DistillationTrainingArguments)
    help_text = parser.format_help()
    assert "--alpha" in help_text and "--temperature" in help_text and "distillation" in help_text
    (parsed,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--alpha", "0.3", "--temperature", "4", "--augment", "false"]
    )
    assert (parsed.alpha, parsed.temperature, parsed.augment) == (0.3, 4.0, False)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"temperature": 0}, "temperature"),
     ({"temperature": -2.0}, "temperature"), ({"image_column": ""}, "image_column"),
     # NaN and infinity: temperature=inf used to train to all-NaN weights with a reported loss of 0.0
     ({"temperature": math.inf}, "temperature"), ({"temperature": math.nan}, "temperature"),
     ({"alpha": math.nan}, "alpha"), ({"alpha": True}, "alpha"), ({"temperature": "10"}, "temperature"),
     ({"learning_rate": math.nan}, "learning_rate"), ({"max_grad_norm": math.inf}, "max_grad_norm"),
     ({"weight_decay": -math.inf}, "weight_decay"), ({"label_column": None}, "label_column")],
)
def test_bad_arguments_name_the_option(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        DistillationTrainingArguments(str(tmp_path), **kwargs)


# --- the loss -------------------------------------------------------------------------------------------

def _reference_loss(student, teacher, labels, alpha, temperature):
    """The formula written out in numpy (float64)."""
    s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    log_p_t, log_p_s = log_softmax(t / temperature), log_softmax(s / temperature)
    kl = (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=1).mean()
    ce = -log_softmax(s)[np.arange(len(labels)), labels].mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def test_loss_equals_the_formula_on_hand_made_logits():
    student = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    teacher = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 4.0, 1.0]])
    labels = torch.tensor([0, 2])
    for alpha, temperature in [(0.5, 10.0), (0.3, 2.0), (0.0, 10.0), (1.0, 4.0)]:
        got = distillation_loss(student, teacher, labels, alpha, temperature).item()
        assert got == pytest.approx(_reference_loss(student, teacher, labels, alpha, temperature), rel=1e-5)
    # alpha 0 is plain cross-entropy and needs no teacher; alpha 1 is pure KD and needs no labels
    assert distillation_loss(student, None, labels, 0.0, 10.0).item() == pytest.approx(
        F.cross_entropy(student, labels).item(), rel=1e-6
    )
    kd = 16.0 * F.kl_div(F.log_softmax(student / 4, 1), F.softmax(teacher / 4, 1), reduction="batchmean")
    assert distillation_loss(student, teacher, None, 1.0, 4.0).item() == pytest.approx(kd.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher, None, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(student, teacher, None, 0.5, 10.0)
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(student, teacher[:, :2], labels, 0.5, 10.0)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_trainer_compute_loss_matches_the_formula(tmp_path, alpha):
    teacher, processor = tiny_vit(seed=1)
    student, _ = tiny_vit(seed=2)
    ds = random_image_dataset(8)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, alpha=alpha, temperature=3.0),
        train_dataset=ds, eval_dataset=ds, processing_class=processor,
    )
    batch = one_batch(trainer)
    before = {k: v.clone() for k, v in batch.items()}
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(student, batch, return_outputs=True)
        s = student(pixel_values=batch["pixel_values"]).logits
        t = teacher(pixel_values=batch["pixel_values"]).logits
    assert torch.allclose(outputs.logits, s)
    # The trainer computes in float32: between two random tiny models the KL term is a difference of terms of
    # order 1 that cancel to ~0.01, so its error is absolute (float32 epsilon x T^2 ~ 1e-6), not relative.
    assert loss.item() == pytest.approx(_reference_loss(s, t, batch["labels"].numpy(), alpha, 3.0), rel=1e-5,
                                        abs=1e-6)
    assert all(torch.equal(before[k], batch[k]) for k in before) and set(batch) == set(before)


# --- the teacher ----------------------------------------------------------------------------------------

def test_teacher_is_frozen_and_only_the_student_learns(tmp_path):
    teacher, processor = tiny_vit(seed=1)
    teacher.train()
    student, _ = tiny_vit(seed=2)
    ds = random_image_dataset(8)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, learning_rate=1e-2),
        train_dataset=ds, processing_class=processor,
    )
    assert trainer.teacher is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert next(teacher.parameters()).device == next(student.parameters()).device == trainer.args.device
    teacher_before, student_before = params(teacher), params(student)
    trainer.train()
    assert all(torch.equal(teacher_before[k], v) for k, v in params(teacher).items())
    assert any(not torch.equal(student_before[k], v) for k, v in params(student).items())
    assert not teacher.training


def _kl_to_teacher(student, teacher, pixels):
    with torch.no_grad():
        return F.kl_div(F.log_softmax(student(pixel_values=pixels).logits, 1),
                        F.softmax(teacher(pixel_values=pixels).logits, 1), reduction="batchmean").item()


def test_student_moves_toward_the_teachers_soft_labels(tmp_path):
    teacher, processor = tiny_vit(seed=1)
    with torch.no_grad():  # a confident teacher, so its soft labels say something
        teacher.classifier.weight.mul_(30.0)
    student, _ = tiny_vit(seed=2)
    ds = random_image_dataset(16)
    args = make_args(tmp_path, alpha=1.0, temperature=2.0, augment=False, learning_rate=3e-3, max_steps=40,
                     per_device_train_batch_size=8, logging_steps=10)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                  processing_class=processor)
    pixels = processor(images=list(ds["image"]), return_tensors="pt")["pixel_values"]
    before = _kl_to_teacher(student, teacher, pixels)
    trainer.train()
    student.eval()
    after = _kl_to_teacher(student, teacher, pixels)
    assert before > 0.2
    assert after < 0.3 * before
    with torch.no_grad():
        agree = (student(pixel_values=pixels).logits.argmax(1) == teacher(pixel_values=pixels).logits.argmax(1))
    assert agree.float().mean() >= 0.8


def test_different_architectures_and_processors(tmp_path):
    teacher, teacher_processor = tiny_vit(image_size=48, seed=1)  # other size and normalisation
    student, student_processor = tiny_resnet(image_size=32, seed=2)
    ds = random_image_dataset(8)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=ds, eval_dataset=ds,
        processing_class=student_processor, teacher_processing_class=teacher_processor,
    )
    batch = one_batch(trainer)
    assert batch["pixel_values"].shape[-1] == 32 and batch["teacher_pixel_values"].shape[-1] == 48
    train_batch = next(iter(trainer.get_train_dataloader()))
    assert train_batch["teacher_pixel_values"].shape[-1] == 48
    trainer.train()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])

    convnext, convnext_processor = tiny_convnext(seed=3)
    trainer = DistillationTrainer(
        model=convnext, teacher_model=teacher, args=make_args(tmp_path, max_steps=1), train_dataset=ds,
        processing_class=convnext_processor, teacher_processing_class=teacher_processor,
    )
    trainer.train()


# --- the cache ------------------------------------------------------------------------------------------

def test_precompute_matches_the_teacher_and_leaves_the_input_alone():
    teacher, processor = tiny_vit(image_size=48, seed=1)
    ds = random_image_dataset(10, modes=("RGB", "L"))
    cached = precompute_teacher_logits(teacher, ds, processor, batch_size=4)
    assert ds.column_names == ["image", "label"]
    assert cached.column_names == ["image", "label", "teacher_logits"]
    assert cached.features["teacher_logits"].length == 4
    pixels = processor(images=[image.convert("RGB") for image in ds["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = teacher(pixel_values=pixels).logits.numpy()
    assert np.allclose(np.asarray(cached["teacher_logits"]), expected, atol=1e-5)
    again = precompute_teacher_logits(teacher, ds, processor, batch_size=10)
    assert again._fingerprint == cached._fingerprint
    with torch.no_grad():
        teacher.classifier.bias.add_(1.0)
    assert precompute_teacher_logits(teacher, ds, processor)._fingerprint != cached._fingerprint

    with pytest.raises(ValueError, match="teacher_logits"):
        precompute_teacher_logits(teacher, cached, processor)
    with pytest.raises(ValueError, match="batch_size"):
        precompute_teacher_logits(teacher, ds, processor, batch_size=0)
    with pytest.raises(ValueError, match="image_processor"):
        precompute_teacher_logits(teacher, ds)
    with pytest.raises(ValueError, match="'img'"):
        precompute_teacher_logits(teacher, ds, processor, image_column="img")
    with pytest.raises(ValueError, match="raw"):
        precompute_teacher_logits(teacher, ds.with_format("torch"), processor)


def test_cached_and_online_teacher_give_the_same_training(tmp_path):
    teacher, teacher_processor = tiny_vit(image_size=48, seed=1, image_mean=(0.4, 0.4, 0.4))
    ds = random_image_dataset(12)
    cached = precompute_teacher_logits(teacher, ds, teacher_processor, batch_size=5)

    def run(train_ds, teacher_model, name):
        student, student_processor = tiny_vit(seed=2)
        args = make_args(tmp_path / name, augment=False, max_steps=3, alpha=0.7, temperature=5.0,
                         eval_strategy="steps", eval_steps=3)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher_model, args=args, train_dataset=train_ds, eval_dataset=train_ds,
            processing_class=student_processor, teacher_processing_class=teacher_processor,
        )
        first = trainer.compute_loss(student, one_batch(trainer)).item()
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        evals = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
        return first, losses, evals, params(student)

    online = run(ds, teacher, "online")
    offline = run(cached, None, "cached")  # no teacher at all: the trainer must not need it

    def refuse(*_):
        raise AssertionError("the teacher ran although the logits are cached")

    hook = teacher.register_forward_pre_hook(refuse)
    try:
        with_teacher = run(cached, teacher, "cached-with-teacher")  # a teacher given, still never run
    finally:
        hook.remove()
    assert with_teacher[1] == offline[1]
    assert online[0] == pytest.approx(offline[0], rel=1e-5)
    assert np.allclose(online[1], offline[1], rtol=1e-5) and len(online[1]) == 3
    assert np.allclose(online[2], offline[2], rtol=1e-5) and len(online[2]) == 1
    assert all(torch.allclose(online[3][k], offline[3][k], atol=1e-5) for k in online[3])


def test_cache_with_augmentation_or_without_teacher_is_refused(tmp_path):
    teacher, processor = tiny_vit(seed=1)
    student, _ = tiny_vit(seed=2)
    ds = random_image_dataset(4)
    cached = precompute_teacher_logits(teacher, ds, processor)
    with pytest.raises(ValueError, match="augment"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, augment=True),
                            train_dataset=cached, processing_class=processor)
    with pytest.raises(ValueError, match="teacher_model"):
        DistillationTrainer(model=student, args=make_args(tmp_path), train_dataset=ds, processing_class=processor)
    with pytest.raises(ValueError, match="eval_dataset"):
        DistillationTrainer(model=student, args=make_args(tmp_path, augment=False), train_dataset=cached,
                            eval_dataset=ds, processing_class=processor)
    # alpha 0 is plain CE: no teacher needed
    DistillationTrainer(model=student, args=make_args(tmp_path, alpha=0.0), train_dataset=ds,
                        processing_class=processor)


def test_bad_setup_is_refused(tmp_path):
    teacher, processor = tiny_vit(num_labels=5, seed=1)
    student, _ = tiny_vit(num_labels=4, seed=2)
    ds = random_image_dataset(4)
    with pytest.raises(ValueError, match="labels"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=ds,
                            processing_class=processor)
    with pytest.raises(ValueError, match="DistillationTrainingArguments"):
        DistillationTrainer(model=student, teacher_model=tiny_vit(seed=1)[0],
                            args=TrainingArguments(str(tmp_path), use_cpu=True), train_dataset=ds)
    with pytest.raises(ValueError, match="image processor"):
        DistillationTrainer(model=student, teacher_model=tiny_vit(seed=1)[0], args=make_args(tmp_path),
                            train_dataset=ds)


def _relabelled(ds, num_classes, label=None):
    """``ds`` with a ClassLabel of ``num_classes`` classes (and every label set to ``label`` if given)."""
    from datasets import ClassLabel

    ds = ds.cast_column("label", ClassLabel(num_classes=num_classes))
    return ds if label is None else ds.map(lambda row: {"label": label})


def test_more_classes_than_the_student_is_refused_before_training(tmp_path):
    """Used to stop mid-training with an IndexError (or a shape error for a too wide cache)."""
    teacher, processor = tiny_vit(num_labels=4, seed=1)
    student, _ = tiny_vit(num_labels=4, seed=2)
    ds = random_image_dataset(8)
    five = _relabelled(ds, 5, label=4)

    def build(**kwargs):
        settings = dict(model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=ds,
                        processing_class=processor)
        settings.update(kwargs)
        return DistillationTrainer(**settings)

    with pytest.raises(ValueError, match=r"Column 'label' of train_dataset has 5 classes but num_labels=4 for the "
                                         r"student and the teacher: build .* num_labels=5, or map the labels"):
        build(train_dataset=five)
    with pytest.raises(ValueError, match=r"eval_dataset\['b'\] has 5 classes"):
        build(eval_dataset={"a": ds, "b": five})
    plain_ints = ds.cast_column("label", Value("int64")).map(lambda row, i: {"label": 6 if i == 3 else 0},
                                                              with_indices=True)
    with pytest.raises(ValueError, match="has 7 classes but num_labels=4 for the student:"):
        build(teacher_model=None, args=make_args(tmp_path, alpha=0.0), train_dataset=plain_ints)
    with pytest.raises(ValueError, match="has 5 classes"):  # a dataset the user prepared with its own transform
        build(train_dataset=five.with_transform(ImageClassificationTransform(processor, augment=False)))
    wide_cache = precompute_teacher_logits(tiny_vit(num_labels=5, seed=3)[0], ds, processor)
    with pytest.raises(ValueError, match="'teacher_logits' of train_dataset holds 5 logits per row but the student "
                                         "has num_labels=4"):
        build(teacher_model=None, args=make_args(tmp_path, augment=False), train_dataset=wide_cache)
    with pytest.raises(ValueError, match="teacher_model has num_labels=5 but the student has num_labels=4"):
        build(teacher_model=tiny_vit(num_labels=5)[0])
    # fewer classes than outputs is fine (a ClassLabel subset, or labels 0..3 of a 10-way head)
    wide_student, _ = tiny_vit(num_labels=10, seed=2)
    build(model=wide_student, teacher_model=tiny_vit(num_labels=10, seed=1)[0], train_dataset=_relabelled(ds, 4))


# --- the teacher's preparation by the accelerator -------------------------------------------------------

def test_teacher_is_prepared_for_inference_by_the_accelerator(tmp_path):
    teacher, processor = tiny_vit(seed=1)
    reference = copy.deepcopy(teacher).eval()
    student, _ = tiny_vit(seed=2)
    ds = random_image_dataset(4)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, bf16=True),
                                  train_dataset=ds, processing_class=processor)
    # prepared in evaluation mode: the teacher itself (no DDP wrapper), frozen, on the student's device
    assert trainer.teacher is teacher and getattr(teacher, "_is_accelerate_prepared", False)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert next(teacher.parameters()).device == trainer.args.device
    # ... and wrapped for the run's mixed precision: bf16 compute, float32 logits out
    pixels = one_batch(trainer, ds)["pixel_values"]
    with torch.no_grad():
        prepared = teacher(pixel_values=pixels).logits
        full = reference(pixel_values=pixels).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = reference(pixel_values=pixels).logits.float()
    assert prepared.dtype == torch.float32
    assert torch.equal(prepared, autocast) and not torch.equal(prepared, full)


def test_teacher_deepspeed_config():
    """What the teacher gets under DeepSpeed (DeepSpeed itself needs GPUs; the config is checked here)."""
    teacher, _ = tiny_vit(hidden_size=32)
    run = {"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"},
           "bf16": {"enabled": True}, "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}
    zero3 = teacher_deepspeed_config(run, teacher)
    assert "optimizer" not in zero3 and "scheduler" not in zero3 and zero3["bf16"] == {"enabled": True}
    assert zero3["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 32 * 32,
                                          "stage3_param_persistence_threshold": 320,
                                          "stage3_prefetch_bucket_size": int(0.9 * 32 * 32)}
    assert run["zero_optimization"]["reduce_bucket_size"] == "auto"  # the run's own config is untouched
    zero2 = teacher_deepspeed_config({**run, "zero_optimization": {"stage": 2}}, teacher)
    assert zero2["zero_optimization"] == {"stage": 0}  # nothing to shard for a model without optimizer states
    resnet, _ = tiny_resnet()
    assert teacher_deepspeed_config(run, resnet)["zero_optimization"]["reduce_bucket_size"] == 16 * 16


# --- Trainer features -----------------------------------------------------------------------------------

class GradRecorder(TrainerCallback):
    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def test_gradient_accumulation_1x4_equals_4x1(tmp_path):
    teacher, processor = tiny_vit(seed=1)
    ds = random_image_dataset(8)

    def grads(batch_size, accumulation):
        student, _ = tiny_vit(seed=2)  # LayerNorm only: per-sample gradients do not depend on the batch
        recorder = GradRecorder()
        args = make_args(tmp_path / f"{batch_size}x{accumulation}", per_device_train_batch_size=batch_size,
                         gradient_accumulation_steps=accumulation, max_steps=1, augment=False, max_grad_norm=0.0)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                      processing_class=processor, callbacks=[recorder])
        trainer.train()
        return recorder.grads[0], trainer.state.log_history[0]["loss"]

    one_by_four, loss_a = grads(4, 1)
    four_by_one, loss_b = grads(1, 4)
    assert one_by_four.keys() == four_by_one.keys() and one_by_four
    for name in one_by_four:
        assert torch.allclose(one_by_four[name], four_by_one[name], rtol=1e-4, atol=1e-6), name
    assert loss_a == pytest.approx(loss_b, rel=1e-5)


def test_checkpoint_save_and_resume(tmp_path):
    """Resuming gives the uninterrupted run exactly (without augmentation).

    ViT's weights are renamed in memory by transformers 5 and back on save; the
    Trainer's own reload skipped them silently, so this also guards our reload.
    """
    teacher, processor = tiny_vit(seed=1)
    ds = random_image_dataset(12)

    def run(name, resume=None, augment=False):
        student, _ = tiny_vit(seed=2)
        args = make_args(tmp_path / name, max_steps=6, save_strategy="steps", save_steps=2,
                         per_device_train_batch_size=4, learning_rate=1e-2, augment=augment)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                      processing_class=processor)
        trainer.train(resume_from_checkpoint=resume)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        return trainer, params(student), losses

    _, full, full_losses = run("full")
    checkpoint = tmp_path / "full" / "out" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()
    assert (checkpoint / "preprocessor_config.json").is_file()
    assert not list(checkpoint.glob("*teacher*"))
    resumed_trainer, resumed, resumed_losses = run("resumed", resume=str(checkpoint))
    assert resumed_trainer.state.global_step == 6
    assert np.allclose(full_losses, resumed_losses, rtol=1e-6)
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)

    # With augmentation the crop/flip stream continues from the generator state saved in the
    # checkpoint (the data loader had already prefetched a batch), so only the start matches.
    _, _, augmented_losses = run("augmented", augment=True)
    _, _, again = run("augmented-resumed", resume=str(tmp_path / "augmented" / "out" / "checkpoint-2"),
                      augment=True)
    assert augmented_losses[:2] == again[:2] and len(again) == 6 and all(map(math.isfinite, again))


def test_teacher_and_student_from_saved_folders(tmp_path):
    teacher, teacher_processor = tiny_vit(image_size=48, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    teacher_processor.save_pretrained(tmp_path / "teacher")
    student, student_processor = tiny_resnet(seed=2)
    student.save_pretrained(tmp_path / "student")
    student_processor.save_pretrained(tmp_path / "student")
    assert (tmp_path / "teacher" / "model.safetensors").is_file()
    ds = random_image_dataset(4)
    trainer = DistillationTrainer(model=str(tmp_path / "student"), teacher_model=str(tmp_path / "teacher"),
                                  args=make_args(tmp_path, max_steps=1), train_dataset=ds)
    assert trainer.teacher_processing_class.size == {"height": 48, "width": 48}
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    trainer.train()
    cached = precompute_teacher_logits(str(tmp_path / "teacher"), ds)
    direct = precompute_teacher_logits(teacher, ds, teacher_processor)
    assert np.allclose(np.asarray(cached["teacher_logits"]), np.asarray(direct["teacher_logits"]), atol=1e-6)


def test_evaluation_and_unlabelled_prediction(tmp_path):
    teacher, processor = tiny_vit(seed=1)
    student, _ = tiny_vit(seed=2)
    ds = random_image_dataset(6)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path),
                                  train_dataset=ds, eval_dataset={"a": ds, "b": ds}, processing_class=processor,
                                  compute_metrics=lambda p: {"acc": float((p.predictions.argmax(1)
                                                                           == p.label_ids).mean())})
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_a_loss"]) and 0 <= metrics["eval_b_acc"] <= 1
    unlabelled = ds.remove_columns("label")
    output = trainer.predict(unlabelled)
    assert output.predictions.shape == (6, 4)


@pytest.mark.skipif(not is_bf16_available(ignore_tpu=True), reason="no bf16 on this CPU")
def test_bf16_training(tmp_path):
    teacher, teacher_processor = tiny_vit(image_size=48, seed=1)
    student, processor = tiny_resnet(seed=2)
    ds = random_image_dataset(8)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, bf16=True),
                                  train_dataset=ds, eval_dataset=ds, processing_class=processor,
                                  teacher_processing_class=teacher_processor)
    before = params(student)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(before[k], v) for k, v in params(student).items())
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_half_precision_teacher_with_full_precision_student(tmp_path):
    teacher, processor = tiny_vit(seed=1)
    teacher.to(torch.bfloat16)  # e.g. a large teacher kept in bf16 to save memory
    student, _ = tiny_vit(seed=2)
    ds = random_image_dataset(4)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, max_steps=1),
                                  train_dataset=ds, processing_class=processor)
    batch = one_batch(trainer, ds)
    with torch.no_grad():
        reference = teacher(pixel_values=batch["pixel_values"].to(torch.bfloat16)).logits.float()
    assert torch.equal(trainer._teacher_logits(batch["pixel_values"]), reference)
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])
