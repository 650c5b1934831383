"""The wheel that `pip install .` builds ships every non-code file the package needs."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        cwd=out,
    )
    (wheel,) = out.glob("hf_backdoor_guard-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_ships_metric_modules_and_card_templates(wheel_names):
    for name in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert f"hf_backdoor_guard/metrics/{name}.py" in wheel_names
    templates = [p for p in (ROOT / "model_cards").iterdir() if p.suffix in (".md", ".jinja")]
    for template in templates:
        assert f"hf_backdoor_guard/model_cards/{template.name}" in wheel_names


def test_wheel_ships_the_embedded_default(wheel_names):
    shipped = ROOT / "hf_backdoor_guard" / "embedded"
    files = [p for p in shipped.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors")]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.name == "model_index.json" for p in files)
    for path in files:
        assert path.relative_to(ROOT).as_posix() in wheel_names


def test_console_script_is_declared_and_answers_help():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"backdoor-guard": "hf_backdoor_guard.cli:main"}
    result = subprocess.run([sys.executable, "-m", "hf_backdoor_guard.cli", "demo", "--help"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "--attack" in result.stdout
