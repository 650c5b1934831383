"""train_classifier (plain Trainer with the transforms), BackdoorMetricsCallback and the MultiStep schedule."""

import math

import pytest
import torch
from tiny_classifiers import random_image_dataset, tiny_resnet, tiny_vit
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_backdoor_guard import (
    BackdoorMetricsCallback,
    BadNets,
    DistillationTrainer,
    DistillationTrainingArguments,
    ImageClassificationCollator,
    ImageClassificationTransform,
    evaluate_backdoor,
    train_classifier,
)
from hf_backdoor_guard.training.classifier import (
    ImageClassifierTrainer,
    MultiStepFactor,
    MultiStepLRCallback,
    build_classifier_trainer,
    check_milestones,
)

KEYS = ("eval_clean_accuracy", "eval_attack_success_rate", "eval_robust_accuracy")


def plain_args(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                    per_device_eval_batch_size=8, max_steps=3, save_strategy="no", logging_steps=1, seed=0,
                    disable_tqdm=True, learning_rate=1e-2)
    settings.update(overrides)
    return TrainingArguments(**settings)


class LogRecorder(TrainerCallback):
    """Stands in for a report_to integration: it sees exactly what on_log hands TensorBoard & co."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_train_classifier_trains_and_leaves_inputs_alone(tmp_path):
    model, processor = tiny_resnet(seed=0)
    ds = random_image_dataset(12, modes=("RGB", "L"))
    args = plain_args(tmp_path, eval_strategy="steps", eval_steps=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = train_classifier(model, ds, args, processor, eval_dataset=ds)
    assert isinstance(trainer, ImageClassifierTrainer) and trainer.model is model
    assert trainer.state.global_step == 3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert args.remove_unused_columns is True  # the user's args were copied, not changed
    assert ds.format["type"] is None and ds.column_names == ["image", "label"]
    assert isinstance(trainer.data_collator, ImageClassificationCollator)
    assert trainer.train_dataset.format["format_kwargs"]["transform"].augment
    assert not trainer.eval_dataset.format["format_kwargs"]["transform"].augment
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evals) == 1 and math.isfinite(evals[0]["eval_loss"])
    assert trainer.predict(ds.remove_columns("label")).predictions.shape == (12, 4)


def test_train_classifier_without_training_and_resume(tmp_path):
    model, processor = tiny_vit(seed=0)
    ds = random_image_dataset(8)
    args = plain_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    full = train_classifier(model, ds, args, processor, augment=False)
    untrained = build_classifier_trainer(tiny_vit(seed=0)[0], ds, plain_args(tmp_path / "b", max_steps=4),
                                         processor, augment=False)
    assert isinstance(untrained, ImageClassifierTrainer) and untrained.state.global_step == 0
    resumed = train_classifier(tiny_vit(seed=0)[0], ds, plain_args(tmp_path / "c", max_steps=4), processor,
                               augment=False, resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    for name, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-6), name


class ScaledLossTrainer(ImageClassifierTrainer):
    """A trainer with its own loss and an extra constructor option, as defenses write them."""

    def __init__(self, *args, loss_scale=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_scale = loss_scale

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        return (self.loss_scale * loss, outputs) if return_outputs else self.loss_scale * loss


def test_build_classifier_trainer_with_a_trainer_class(tmp_path):
    model, processor = tiny_vit(seed=0)
    ds = random_image_dataset(8)
    trainer = build_classifier_trainer(model, ds, plain_args(tmp_path, max_steps=1), processor, augment=False,
                                       trainer_class=ScaledLossTrainer, loss_scale=0.0)
    assert isinstance(trainer, ScaledLossTrainer) and trainer.loss_scale == 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a zero loss moves nothing
    with pytest.raises(ValueError, match="trainer_class"):
        build_classifier_trainer(model, ds, plain_args(tmp_path), processor, trainer_class=Trainer)


def test_train_classifier_bad_input(tmp_path):
    model, processor = tiny_vit(num_labels=3)
    ds = random_image_dataset(4, num_labels=4)
    with pytest.raises(ValueError, match=r"Column 'label' of train_ds has 4 classes but num_labels=3 for the model: "
                                         r"build the model with num_labels=4"):
        train_classifier(model, ds, plain_args(tmp_path), processor)
    with pytest.raises(ValueError, match=r"Column 'label' of test has 4 classes"):
        train_classifier(tiny_vit(num_labels=3)[0], random_image_dataset(4, num_labels=3), plain_args(tmp_path),
                         processor, eval_dataset={"test": ds})
    # NaN options used to train silently to NaN weights
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        train_classifier(tiny_vit()[0], ds, plain_args(tmp_path, learning_rate=math.nan), processor)
    with pytest.raises(ValueError, match="max_grad_norm"):
        build_classifier_trainer(tiny_vit()[0], ds, plain_args(tmp_path, max_grad_norm=math.inf), processor)
    with pytest.raises(ValueError, match="'label'"):
        train_classifier(tiny_vit()[0], ds.rename_column("label", "y"), plain_args(tmp_path), processor)
    with pytest.raises(ValueError, match="TrainingArguments"):
        train_classifier(tiny_vit()[0], ds, {"output_dir": "x"}, processor)
    with pytest.raises(ValueError, match="image processor"):
        train_classifier(tiny_vit()[0], ds, plain_args(tmp_path), None)


def test_backdoor_metrics_are_logged_at_each_evaluation(tmp_path):
    model, processor = tiny_vit(seed=0)
    train = random_image_dataset(8, seed=1)
    test = random_image_dataset(12, seed=2)
    attack = BadNets(trigger="white", size=6)
    callback = BackdoorMetricsCallback(test, attack, target_label=1, image_processor=processor, batch_size=5)
    assert len(callback.triggered_ds) == sum(1 for label in test["label"] if label != 1)
    recorder = LogRecorder()
    args = plain_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2)
    trainer = train_classifier(model, train, args, processor, eval_dataset=test, callbacks=[recorder, callback])
    assert callback.trainer is trainer

    history = [entry for entry in trainer.state.log_history if KEYS[0] in entry]
    assert [entry["step"] for entry in history] == [2, 4]
    reported = [log for log in recorder.logs if KEYS[0] in log]
    assert len(reported) == 2 and all(set(KEYS) <= set(log) for log in reported)
    expected = evaluate_backdoor(model, test, attack, 1, processor, progress=False)
    assert history[-1][KEYS[0]] == pytest.approx(expected["clean_accuracy"])
    assert history[-1][KEYS[1]] == pytest.approx(expected["attack_success_rate"])
    assert history[-1][KEYS[2]] == pytest.approx(expected["robust_accuracy"])
    metrics = trainer.evaluate()  # the numbers are in evaluate()'s result too
    assert set(KEYS) <= set(metrics)
    calls = []
    compute = callback.compute
    callback.compute = lambda m: calls.append(1) or compute(m)
    both = trainer.evaluate({"a": test, "b": test})  # several eval sets, same weights: no new evaluation
    assert calls == []
    assert both["eval_a_attack_success_rate"] == both["eval_b_attack_success_rate"]
    assert both["eval_a_robust_accuracy"] == metrics["eval_robust_accuracy"]  # same weights, same numbers
    assert sum("eval_b_clean_accuracy" in log for log in recorder.logs) == 1


def test_backdoor_metrics_choose_the_best_distilled_model(tmp_path):
    teacher, processor = tiny_vit(seed=1)
    student, _ = tiny_vit(seed=2)
    train = random_image_dataset(8, seed=1)
    test = random_image_dataset(8, seed=2)
    callback = BackdoorMetricsCallback(test, BadNets(size=4), target_label=0, image_processor=processor)
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], per_device_train_batch_size=4, max_steps=4,
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True,
        metric_for_best_model="attack_success_rate", greater_is_better=False, learning_rate=1e-2,
        disable_tqdm=True, logging_steps=2,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train,
                                  eval_dataset=test, processing_class=processor, callbacks=[callback])
    assert callback.trainer is trainer
    trainer.train()
    rates = [entry[KEYS[1]] for entry in trainer.state.log_history if KEYS[1] in entry]
    assert len(rates) == 2 and trainer.state.best_metric == min(rates)
    # the best checkpoint's weights are loaded back (renamed ViT weights included)
    metrics = trainer.evaluate()
    assert metrics[KEYS[1]] == pytest.approx(trainer.state.best_metric)
    best = next(e for e in trainer.state.log_history if e.get(KEYS[1]) == trainer.state.best_metric)
    best_loss = next(e["eval_loss"] for e in trainer.state.log_history
                     if "eval_loss" in e and e["step"] == best["step"])
    assert metrics["eval_loss"] == pytest.approx(best_loss, rel=1e-6)


def test_unbound_callback_still_records(tmp_path):
    model, processor = tiny_vit(seed=0)
    test = random_image_dataset(6, seed=2)
    callback = BackdoorMetricsCallback(test, BadNets(size=4), target_label=0, image_processor=processor)
    eval_view = test.with_transform(ImageClassificationTransform(processor, augment=False))
    trainer = Trainer(model=model, args=plain_args(tmp_path, remove_unused_columns=False), eval_dataset=eval_view,
                      data_collator=ImageClassificationCollator(), callbacks=[callback])
    metrics = trainer.evaluate()
    assert set(KEYS) <= set(metrics)
    assert any(KEYS[1] in entry for entry in trainer.state.log_history)
    assert all(0.0 <= metrics[key] <= 1.0 for key in KEYS)


def test_callback_bad_input():
    test = random_image_dataset(6, num_labels=4)
    with pytest.raises(ValueError, match="target_label"):
        BackdoorMetricsCallback(test, BadNets(), target_label=7)
    with pytest.raises(ValueError, match="'label'"):
        BackdoorMetricsCallback(test.rename_column("label", "y"), BadNets())
    with pytest.raises(ValueError, match="batch_size"):
        BackdoorMetricsCallback(test, BadNets(), batch_size=0)


# --- MultiStep learning-rate schedule -------------------------------------------------------------------

@pytest.mark.parametrize("milestones, gamma, name", [
    ([], 0.1, "milestones"), ([0], 0.1, r"milestones\[0\]"), ([1, math.nan], 0.1, r"milestones\[1\]"),
    ([math.inf], 0.1, "milestones"), ([3, 1], 0.1, "milestones must be increasing"), ("30", 0.1, "milestones"),
    ([1], 0.0, "gamma"), ([1], math.nan, "gamma"), ([1], 1.5, "gamma"), ([1], True, "gamma"),
])
def test_multistep_options_are_checked_once_in_the_constructor(milestones, gamma, name):
    with pytest.raises(ValueError, match=name):
        MultiStepLRCallback(milestones, gamma)
    with pytest.raises(ValueError, match=name.replace("milestones", "lr_milestones").replace("gamma", "lr_gamma")):
        check_milestones(milestones, gamma, milestones_name="lr_milestones", gamma_name="lr_gamma")


def test_multistep_factor_and_schedule_requirements(tmp_path):
    factor = MultiStepFactor([3, 5], 0.1)
    assert [round(factor(step), 6) for step in range(7)] == [1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    assert MultiStepLRCallback([30, 50.5], 0.2).milestones == [30.0, 50.5]
    callback = MultiStepLRCallback([1.0])
    with pytest.raises(ValueError, match="lr_scheduler_type=constant"):
        callback.check_args(plain_args(tmp_path, lr_scheduler_type="cosine"))
    with pytest.raises(ValueError, match="warmup"):
        callback.check_args(plain_args(tmp_path, lr_scheduler_type="constant", warmup_steps=2))
    callback.check_args(plain_args(tmp_path, lr_scheduler_type="constant"))


def test_multistep_decays_at_the_milestone_and_after_resume(tmp_path):
    ds = random_image_dataset(12)  # batch 4: 3 optimizer steps per epoch

    def run(name, resume=None):
        model, processor = tiny_resnet(seed=0)
        args = plain_args(tmp_path / name, max_steps=-1, num_train_epochs=2, lr_scheduler_type="constant",
                          learning_rate=1e-3, save_strategy="steps", save_steps=3)
        trainer = train_classifier(model, ds, args, processor, augment=False, callbacks=[MultiStepLRCallback([1])],
                                   resume_from_checkpoint=resume)
        return {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e}

    rates = run("full")
    assert sorted(rates) == [1, 2, 3, 4, 5, 6]  # milestone at epoch 1 = after optimizer step 3
    assert all(rates[step] == pytest.approx(1e-3) for step in (1, 2, 3))
    assert all(rates[step] == pytest.approx(1e-4) for step in (4, 5, 6))
    resumed = run("resumed", resume=str(tmp_path / "full" / "out" / "checkpoint-3"))
    assert all(resumed[step] == pytest.approx(1e-4) for step in (4, 5, 6))
