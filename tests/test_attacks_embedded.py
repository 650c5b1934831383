"""The embedded benchmark's attack table: every row names a registered attack, departs from its defaults, says why."""

import inspect

import numpy as np
import pytest
import torch

from hf_backdoor_guard.attacks import ATTACKS, LabelConsistent
from hf_backdoor_guard.data import load_digits_dataset
from hf_backdoor_guard.benchmark.attack_settings import (
    DEFAULT_RATE,
    EMBEDDED_ATTACKS,
    BenchmarkAttack,
    embedded_attack,
    train_surrogate,
)


@pytest.mark.parametrize("name", sorted(EMBEDDED_ATTACKS))
def test_each_row_is_a_registered_attack_that_departs_from_its_defaults(name):
    setting = EMBEDDED_ATTACKS[name]
    assert name in ATTACKS
    assert setting.why != BenchmarkAttack().why and len(setting.why) > 30
    defaults = {key: p.default for key, p in inspect.signature(ATTACKS[name]).parameters.items()}
    changed = {key for key, value in setting.options.items() if defaults[key] != value}
    assert changed or setting.rate != DEFAULT_RATE or setting.poison or setting.surrogate_epochs
    assert set(setting.options) <= set(defaults)  # no option the attack does not take


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if EMBEDDED_ATTACKS.get(n, BenchmarkAttack()).
                                  surrogate_epochs is None])
def test_attacks_without_a_surrogate_build_from_the_table(name):
    attack, poison = embedded_attack(name, seed=1)
    assert attack.name == name and set(poison) >= {"rate"}
    for key, value in EMBEDDED_ATTACKS.get(name, BenchmarkAttack()).options.items():
        assert attack.config()[key] == value


def test_a_surrogate_setting_needs_the_clean_split_and_trains_on_it_once():
    name = "label_consistent"
    if EMBEDDED_ATTACKS.get(name, BenchmarkAttack()).surrogate_epochs is None:
        pytest.skip("the table gives label_consistent no surrogate")
    with pytest.raises(ValueError, match="pass clean_data="):
        embedded_attack(name, seed=0)


@pytest.fixture(scope="module")
def small_clean():
    return load_digits_dataset(seed=0)["pretrain"].select(range(40))


@pytest.mark.parametrize("epsilon", [None, 16 / 255])
def test_train_surrogate_plain_and_adversarial(small_clean, epsilon):
    model, processor = train_surrogate(small_clean, seed=3, epochs=1, epsilon=epsilon)
    assert not model.training
    again = train_surrogate(small_clean, seed=3, epochs=1, epsilon=epsilon)
    assert again[0] is model  # trained once per process
    attack = LabelConsistent(model, processor, steps=2)
    out = attack.poison_image(small_clean[0]["image"], index=0, label=small_clean[0]["label"])
    assert np.abs(np.asarray(out).astype(int) - np.asarray(small_clean[0]["image"].convert("RGB"))).max() > 0
    with torch.no_grad():
        logits = model(**processor(images=[small_clean[0]["image"].convert("RGB")], return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
