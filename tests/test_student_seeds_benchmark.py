"""benchmarks/student_seeds.py: its student settings, the model names its recorded files rely on,
and the BENCHMARKS.md "student seeds" table recomputed from the recorded runs."""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = runpy.run_path(str(ROOT / "benchmarks" / "student_seeds.py"), run_name="student_seeds")


def test_student_settings_parse_and_name_their_models():
    parse, name = SCRIPT["parse_student"], SCRIPT["student_name"]
    assert parse("9,lr=0.001") == {"epochs": 9.0, "learning_rate": 0.001}
    assert parse("6,wd=0.01,lr=2e-3") == {"epochs": 6.0, "weight_decay": 0.01, "learning_rate": 0.002}
    # the recorded files name their models this way: a change here orphans every record
    assert name({"epochs": 6.0}, 0) == "student_e6_s0"
    assert name({"epochs": 9.0, "learning_rate": 0.001}, 3) == "student_e9_lr_0.001_s3"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown student option 'momentum'"):
        parse("6,momentum=0.9")


def test_benchmarks_table_is_what_the_recorded_runs_give():
    records = [record for name in ("student_seeds_results.jsonl", "student_seeds_lr_results.jsonl")
               for record in SCRIPT["read_records"](ROOT / "benchmarks" / name)]
    # where the demo's own setting was among the students, student seed 0 gave the demo's numbers
    assert [record["reproduces_demo"] for record in records].count(True) == 29
    assert False not in [record["reproduces_demo"] for record in records]
    table = SCRIPT["summarize"](records)
    rows = [line for line in table.splitlines() if line.startswith(("| 9 lr 0.001 |", "| 6 lr 0.002 |"))]
    assert len(rows) == 2 and all(row in (ROOT / "BENCHMARKS.md").read_text() for row in rows)
    assert rows[0].split(" | ")[1] == "145"
