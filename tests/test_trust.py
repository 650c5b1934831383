"""Nothing from a model folder or repo is ever executed.

Every ``from_pretrained`` call in the package pins ``trust_remote_code`` (checked on
the source with ``ast``), and a folder whose image processor needs remote code is
refused, named and explained, even when stdin answers "y" to transformers' prompt.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification, ViTImageProcessorPil

from hf_backdoor_guard.hub import publish as hub

PACKAGE = Path(__file__).resolve().parent.parent / "hf_backdoor_guard"

# Called expression (or (file relative to the package, expression)) -> why it needs no trust_remote_code keyword.
NOT_REMOTE_CODE_LOADERS = {
    "ImageVariation.from_pretrained":
        "hf_backdoor_guard's own ImageVariation.from_pretrained: it has no trust_remote_code option and loads "
        "through variations/adapters.py, whose diffusers from_pretrained call this test checks",
    ("variations/core.py", "cls.from_pretrained"):
        "ImageVariation.embedded calling ImageVariation.from_pretrained (see above)",
}


def unpinned_from_pretrained_calls() -> list[str]:
    """``file:line  expression`` of every ``.from_pretrained(...)`` call without ``trust_remote_code=``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"):
                continue
            called = ast.unparse(node.func)
            keyword = next((k for k in node.keywords if k.arg == "trust_remote_code"), None)
            if keyword is not None:
                # A literal must be False; a variable is the caller's explicit opt-in, passed through.
                if isinstance(keyword.value, ast.Constant) and keyword.value.value is not False:
                    found.append(f"{relative}:{node.lineno}  {called}(trust_remote_code={keyword.value.value!r})")
                continue
            if called not in NOT_REMOTE_CODE_LOADERS and (relative, called) not in NOT_REMOTE_CODE_LOADERS:
                found.append(f"{relative}:{node.lineno}  {called}(...)")
    return found


def test_every_from_pretrained_in_the_package_pins_trust_remote_code():
    unpinned = unpinned_from_pretrained_calls()
    assert not unpinned, "from_pretrained without trust_remote_code=False:\n" + "\n".join(unpinned)


def test_the_source_check_finds_an_unpinned_call(tmp_path, monkeypatch):
    """The check itself can fail: a module with one pinned and one unpinned call is reported at the right line."""
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / "m.py").write_text(
        "from transformers import AutoModel\n"
        "a = AutoModel.from_pretrained('x', trust_remote_code=False)\n"
        "b = AutoModel.from_pretrained('x')\n"
        "c = AutoModel.from_pretrained('x', trust_remote_code=True)\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert unpinned_from_pretrained_calls() == [
        "m.py:3  AutoModel.from_pretrained(...)", "m.py:4  AutoModel.from_pretrained(trust_remote_code=True)",
    ]


# ----------------------------------------------------------------------------- a folder asking to run code

CLIENT = textwrap.dedent(
    """
    import json, logging, sys
    import torch
    torch.set_num_threads(1)
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage
    from transformers import AutoModelForImageClassification
    import hf_backdoor_guard as hbg

    folder = sys.argv[1]
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("hf_backdoor_guard").addHandler(handler)
    out = {}
    model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    ds = Dataset.from_dict({"image": [PILImage.new("RGB", (8, 8))] * 4, "label": [0, 1, 0, 1]},
                           features=Features({"image": Image(), "label": ClassLabel(num_classes=2)}))
    try:
        out["evaluate"] = hbg.evaluate_backdoor(model, ds, hbg.BadNets(size=2), 0, None)
    except ValueError as err:
        out["evaluate_error"] = str(err)
    loaded = hbg.load_robust_model(folder)
    out["processor"] = repr(loaded.image_processor)
    out["warnings"] = records
    print("RESULT:" + json.dumps(out))  # after any prompt transformers may print without a newline
    """
)


def test_a_processor_that_needs_remote_code_is_refused_even_when_stdin_says_yes(tmp_path):
    """Regression (issue 16, defect 2): evaluate_backdoor(..., image_processor=None) asked, and "y" ran the code."""
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=8, num_labels=2,
                                       num_register_tokens=1)
    folder = tmp_path / "suspicious-model"
    metrics = {"badnets": {"clean_accuracy": 0.9, "attack_success_rate": 0.1, "robust_accuracy": 0.8}}
    hub.publish_model(Dinov2WithRegistersForImageClassification(config), "hbg/suspicious", metrics,
                      ViTImageProcessorPil(size={"height": 8, "width": 8}), output_dir=folder, push=False)
    # No model type of transformers maps Dinov2-with-registers to an image processor, so transformers
    # would import the auto_map class from the folder if allowed. The module only leaves a trace.
    ran = tmp_path / "REMOTE-CODE-RAN"
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    preprocessor.pop("image_processor_type")
    preprocessor["auto_map"] = {"AutoImageProcessor": "custom_processing.CustomImageProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    (folder / "custom_processing.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n"
        "from transformers import ViTImageProcessorPil as CustomImageProcessor\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CLIENT, str(folder)], input="y\ny\ny\n", env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not ran.exists(), "the folder's code ran"
    out = json.loads(done.stdout.split("RESULT:")[-1])
    assert "evaluate" not in out, out
    for message in (out["evaluate_error"], *[w for w in out["warnings"] if "image processor" in w]):
        assert "custom_processing.CustomImageProcessor" in message and "trust_remote_code" in message, message
        assert "no preprocessor_config.json" not in message
    assert any(str(folder) in w and "refused" in w for w in out["warnings"]), out["warnings"]
    assert out["processor"] == "None"
