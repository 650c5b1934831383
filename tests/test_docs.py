"""README quotes the defaults the code has: each sentence below is built from the code's values.

When a default changes, this fails until the README says the new value (it used to say "half the teacher's
epochs" long after students trained 9 of 12, and "halves the DDIM steps" for 10 -> 7).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def readme() -> str:
    return re.sub(r"\s+", " ", README.read_text(encoding="utf-8"))  # line breaks do not matter


def _default(cls, name):
    return next(item.default for item in dataclasses.fields(cls) if item.name == name)


def _number(value: float) -> str:
    """As the README writes numbers: 0.6, 12, and small rates as 1e-3."""
    if value and abs(value) < 0.01:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}"


def test_the_demo_settings_quoted_in_the_readme_are_the_codes(readme):
    from hf_backdoor_guard.benchmark.demo import DemoSettings
    from hf_backdoor_guard.embedded import EMBEDDED_SPEED_PRESETS, EMBEDDED_VARIATION_DEFAULTS

    variations = EMBEDDED_VARIATION_DEFAULTS
    assert (f"{variations['num_variations']} variations of each image, noised to strength "
            f"{_number(variations['strength'])} and denoised in {variations['num_inference_steps']} DDIM steps") in readme
    settings = DemoSettings()
    assert (f"temperature {_number(settings.temperature)}), {_number(settings.student_epochs)} epochs at learning rate "
            f"{_number(settings.student_learning_rate)}, where the teacher trains {_number(settings.num_train_epochs)} "
            f"at {_number(settings.learning_rate)}") in readme
    assert settings.alpha == 1.0 and "alpha 1.0 (soft labels only" in readme
    fast = EMBEDDED_SPEED_PRESETS["fast"]["num_inference_steps"]
    run = int(fast * variations["strength"]), int(variations["num_inference_steps"] * variations["strength"])
    assert (f'`ImageVariation.embedded(speed="fast")` runs {fast} DDIM steps instead of '
            f"{variations['num_inference_steps']} ({run[0]} of them at strength {_number(variations['strength'])} "
            f"instead of {run[1]})") in readme


def test_the_library_and_defend_defaults_quoted_in_the_readme_are_the_codes(readme):
    from hf_backdoor_guard.training.distillation import DistillationTrainingArguments
    from hf_backdoor_guard.pipeline.config import STUDENT_EPOCH_SHARE, STUDENT_LEARNING_RATE_SHARE, DefendConfig

    paper = DistillationTrainingArguments
    assert (f"`DistillationTrainingArguments` keep the paper's alpha {_number(_default(paper, 'alpha'))} and "
            f"temperature {_number(_default(paper, 'temperature'))}") in readme
    assert (f"`defend` on your own data uses alpha {_number(_default(DefendConfig, 'alpha'))} and temperature "
            f"{_number(_default(DefendConfig, 'temperature'))}") in readme
    assert (f"students at {Fraction(STUDENT_EPOCH_SHARE)} of the teacher's epochs and "
            f"{Fraction(STUDENT_LEARNING_RATE_SHARE)} of its learning rate") in readme
    assert f"{_default(DefendConfig, 'train_val_split'):.0%} of the training rows (`--train_val_split`)" in readme
