"""Attack specs: one value naming an attack and its options (config files, command lines)."""

from __future__ import annotations

import pytest

from hf_backdoor_guard.attacks.specs import attack_from_spec, attack_keys, attack_label, parse_attack_spec


def test_the_three_spellings_parse_to_the_same_thing():
    assert parse_attack_spec("badnets") == ("badnets", {})
    assert parse_attack_spec("BadNets:size=9, trigger=#ff0000") == ("badnets", {"size": 9, "trigger": "#ff0000"})
    assert parse_attack_spec('{"name": "blended", "ratio": 0.2}') == ("blended", {"ratio": 0.2})
    assert parse_attack_spec({"name": "blended", "ratio": 0.2}) == ("blended", {"ratio": 0.2})
    assert parse_attack_spec("wanet:grid_rescale=1.5,cross_ratio=true") == \
        ("wanet", {"grid_rescale": 1.5, "cross_ratio": True})


def test_attacks_are_built_and_labelled():
    assert attack_from_spec({"name": "blended", "ratio": 0.3}).ratio == pytest.approx(0.3)
    assert attack_label({"name": "badnets", "trigger": "white", "size": 3}) == "badnets:size=3,trigger=white"
    assert attack_keys(["badnets:size=3", "badnets:size=9", "sig"]) == ["badnets:size=3", "badnets:size=9", "sig"]


@pytest.mark.parametrize("spec, message", [
    ("badnet", "Unknown attack 'badnet'"),
    ("badnets:size", "options must be 'key=value'"),
    ('{"name": "badnets",', "is not valid JSON"),
    ({"size": 3}, "needs a 'name'"),
    (3, "must be a name"),
])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_attack_spec(spec)


def test_an_option_the_attack_does_not_take_is_named():
    with pytest.raises(ValueError, match="attack badnets: .*color"):
        attack_from_spec("badnets:color=red")
    with pytest.raises(ValueError, match="listed twice"):
        attack_keys(["badnets", "badnets"])
