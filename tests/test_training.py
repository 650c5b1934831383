"""train_classifier (plain Trainer with the transforms) and BackdoorMetricsCallback."""

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
from hf_backdoor_guard.training import ImageClassifierTrainer

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
    untrained = train_classifier(tiny_vit(seed=0)[0], ds, plain_args(tmp_path / "b", max_steps=4), processor,
                                 augment=False, train=False)
    assert untrained.state.global_step == 0
    resumed = train_classifier(tiny_vit(seed=0)[0], ds, plain_args(tmp_path / "c", max_steps=4), processor,
                               augment=False, resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    for name, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-6), name


def test_train_classifier_bad_input(tmp_path):
    model, processor = tiny_vit(num_labels=3)
    ds = random_image_dataset(4, num_labels=4)
    with pytest.raises(ValueError, match="num_labels"):
        train_classifier(model, ds, plain_args(tmp_path), processor)
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
