"""Does the embedded demo's teacher learn each attack's backdoor? Teacher only: poison, train, evaluate.

For every chosen attack and seed this poisons the demo's victim split (``--benchmark``: digits, 800 rows, by
default; fashion-mnist, 5,000 rows; target 0) with the attack's embedded-benchmark setting
(``embedded_attack``, which options below can override), trains the demo's small ResNet teacher
(``demo.build_classifier``) for 12 epochs with the demo's training settings, and measures its attack
success rate (ASR) and clean accuracy (C-Acc). A clean-trained model per seed gives the C-Acc to compare with. It
prints one table per attack and appends every run to a JSON-lines file.

An attack is *planted* when ASR >= 0.90 at every seed and C-Acc is within 0.02 of the
clean model's.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/plant_attacks.py                 # every attack, seeds 0-2
    python benchmarks/plant_attacks.py --attacks wanet --option wanet.k=8 --option wanet.strength=1.0
    python benchmarks/plant_attacks.py --attacks sig --rate sig=1.0 --tag "all target rows"
    python benchmarks/plant_attacks.py --summarize benchmarks/plant_attacks_results.jsonl [--compact]
    python benchmarks/plant_attacks.py --clean-asr          # a clean model's "ASR" under each test trigger
    python benchmarks/plant_attacks.py --clean-asr --benchmark fashion-mnist --attacks badnets blended

``--clean-asr`` measures the floor a defence cannot go below: a model trained on clean data
only, per seed, evaluated with every attack's embedded test trigger. A strong trigger (SIG's
test signal of 160 grey levels) corrupts inputs enough that some land in the target class
with no backdoor at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET = 0
RESULTS_DIR = Path(__file__).resolve().parent  # benchmarks/


def results_file(stem: str, benchmark: str) -> Path:
    """``benchmarks/STEM_results.jsonl`` for the digits, ``STEM_WORLD_results.jsonl`` for another world."""
    world_part = "" if benchmark == "digits" else f"_{benchmark}"
    return RESULTS_DIR / f"{stem}{world_part}_results.jsonl"


def parse_overrides(items: list[str], what: str) -> dict[str, dict]:
    """``attack.key=value`` items as ``{attack: {key: value}}`` (values parsed as JSON when they can be)."""
    parsed: dict[str, dict] = defaultdict(dict)
    for item in items:
        name, _, assignment = item.partition(".")
        key, sep, value = assignment.partition("=")
        if not sep or not name or not key:
            raise SystemExit(f"{what} {item!r}: expected attack.key=value")
        try:
            parsed[name][key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[name][key] = value
    return parsed


def training_args(output_dir: str, seed: int, epochs: float):
    """The demo teacher's training arguments (``DemoSettings`` defaults; AdamW, cosine schedule, no augmentation)."""
    from transformers import TrainingArguments

    from hf_backdoor_guard.benchmark.demo import DemoSettings

    settings = DemoSettings()
    return TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        learning_rate=settings.learning_rate, weight_decay=1e-4, lr_scheduler_type="cosine", warmup_steps=0.05,
        seed=seed, data_seed=seed, save_strategy="no", report_to="none", logging_strategy="epoch", use_cpu=True,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )


def train_model(train, seed: int, epochs: float):
    """The demo's classifier trained on ``train`` with the demo's settings; ``(model, processor)``."""
    from hf_backdoor_guard.benchmark.demo import build_classifier
    from hf_backdoor_guard.training.classifier import train_classifier

    model, processor = build_classifier(10, seed=seed)
    with tempfile.TemporaryDirectory(prefix="hbg-plant-") as scratch:
        train_classifier(model, train, training_args(scratch, seed, epochs), image_processor=processor,
                         augment=False)
    return model, processor


def backdoor_metrics(model, processor, test, attack) -> dict[str, float]:
    from hf_backdoor_guard.evaluation import evaluate_backdoor

    result = evaluate_backdoor(model, test, attack, TARGET, image_processor=processor, batch_size=128,
                               progress=False)
    return {key: float(value) for key, value in result.items()}


def train_teacher(train, test, seed: int, epochs: float, attack=None):
    """Train the demo teacher on ``train``; its C-Acc on ``test`` and, with an attack, its ASR."""
    from hf_backdoor_guard.evaluation import predict_logits

    model, processor = train_model(train, seed, epochs)
    if attack is None:
        logits = predict_logits(model, test, processor, batch_size=128, progress=False)
        return {"clean_accuracy": float((logits.argmax(1) == np.asarray(test["label"])).mean())}
    return backdoor_metrics(model, processor, test, attack)


def clean_accuracy(seed: int, epochs: float, data, records: list[dict], out: Path) -> float:
    """The clean model's C-Acc at ``seed`` (from earlier records when there is one)."""
    for record in records:
        if record["attack"] == "clean" and record["seed"] == seed and record["epochs"] == epochs:
            return record["clean_accuracy"]
    started = time.time()
    result = train_teacher(data["train"], data["test"], seed, epochs)
    record = {"attack": "clean", "seed": seed, "epochs": epochs, **result, "seconds": round(time.time() - started, 1)}
    append(out, record)
    records.append(record)
    return result["clean_accuracy"]


def clean_model_asr(names, seeds, epochs: float, data, out: Path) -> None:
    """Train a clean model per seed and record its ASR and R-Acc under each attack's embedded test trigger."""
    from hf_backdoor_guard.benchmark.attack_settings import embedded_attack

    for seed in seeds:
        model, processor = train_model(data["train"], seed, epochs)
        for name in names:
            attack, _ = embedded_attack(name, seed=seed, clean_data=data["pretrain"])
            record = {"attack": name, "seed": seed, "epochs": epochs, "tag": "clean model",
                      **backdoor_metrics(model, processor, data["test"], attack)}
            append(out, record)
            print(f"clean model, {name} test trigger, seed {seed}: ASR {record['attack_success_rate']:.3f} "
                  f"R-Acc {record['robust_accuracy']:.3f}", flush=True)


def append(out: Path, record: dict) -> None:
    with out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def run_one(name: str, seed: int, args, data, options: dict, poison: dict, rate: float | None,
            surrogate_epochs: float | None, surrogate_epsilon: float | None = None) -> dict:
    from hf_backdoor_guard.attacks import attack_from_name
    from hf_backdoor_guard.benchmark.attack_settings import EMBEDDED_ATTACKS, embedded_attack, train_surrogate
    from hf_backdoor_guard.poisoning import poison_dataset

    started = time.time()
    attack, poison_kwargs = embedded_attack(name, seed=seed, clean_data=data["pretrain"])
    if options or surrogate_epochs is not None:  # rebuild with the overrides on top of the embedded setting
        setting = EMBEDDED_ATTACKS.get(name)
        merged = {**(setting.options if setting else {}), **options}
        if surrogate_epochs is not None:  # a surrogate trained on the clean pretraining split only
            merged["surrogate"], merged["processor"] = train_surrogate(data["pretrain"], seed, surrogate_epochs,
                                                                       surrogate_epsilon)
        elif getattr(attack, "surrogate", None) is not None:
            merged.update(surrogate=attack.surrogate, processor=attack.processor)
        attack = attack_from_name(name, **merged)
    poison_kwargs = {**poison_kwargs, **poison}
    if rate is not None:
        poison_kwargs["rate"] = rate
    poisoned = poison_dataset(data["train"], attack, target_label=TARGET, seed=seed, **poison_kwargs)
    poison_seconds = time.time() - started
    result = train_teacher(poisoned, data["test"], seed, args.epochs, attack)
    return {
        "attack": name, "seed": seed, "epochs": args.epochs, "tag": args.tag,
        "config": json.loads(json.dumps(attack.config(), default=str)),
        "poison": {k: v for k, v in poison_kwargs.items()}, "surrogate_epochs": surrogate_epochs,
        "surrogate_epsilon": surrogate_epsilon,
        "poisoned_rows": int(sum(poisoned["poisoned"])), "cover_rows": int(sum(poisoned["cover"])),
        **result, "poison_seconds": round(poison_seconds, 1), "seconds": round(time.time() - started, 1),
    }


def table(records: list[dict], clean: dict[int, float]) -> str:
    """Markdown tables, one per (attack, setting), in the order first seen."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        if record["attack"] != "clean":
            key = (record["attack"], json.dumps(record["config"], sort_keys=True),
                   json.dumps(record["poison"], sort_keys=True), record.get("tag", ""))
            groups[key].append(record)
    lines = []
    for (attack, config, poison, tag), rows in groups.items():
        rows = sorted({r["seed"]: r for r in rows}.values(), key=lambda r: r["seed"])  # newest run per seed
        planted = all(r["attack_success_rate"] >= 0.90 and clean.get(r["seed"], 0) - r["clean_accuracy"] <= 0.02
                      for r in rows)
        lines += [f"### {attack} {tag}".rstrip(), f"options `{config}`, poisoning `{poison}`",
                  f"planted at seeds {[r['seed'] for r in rows]}: {'yes' if planted else 'no'}", "",
                  "| seed | ASR | C-Acc | clean C-Acc | C-Acc drop | poisoned | cover | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            reference = clean.get(r["seed"], float("nan"))
            lines.append(f"| {r['seed']} | {r['attack_success_rate']:.3f} | {r['clean_accuracy']:.3f} | "
                         f"{reference:.3f} | {reference - r['clean_accuracy']:+.3f} | {r['poisoned_rows']} | "
                         f"{r['cover_rows']} | {r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def compact_table(records: list[dict], clean: dict[int, float]) -> str:
    """One markdown row per (attack, setting): ASR and C-Acc drop at each seed, planted or not."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for record in records:
        if record["attack"] != "clean":
            key = (record["attack"], record.get("tag", ""), json.dumps(record["config"], sort_keys=True),
                   json.dumps(record["poison"], sort_keys=True))
            groups[key][record["seed"]] = record  # newest run per seed
    lines = ["| attack | setting | rate | ASR per seed | C-Acc drop per seed | planted |", "|---|---|---|---|---|---|"]
    for (attack, tag, _, poison), runs in groups.items():
        seeds = sorted(runs)
        asr = " / ".join(f"{runs[s]['attack_success_rate']:.3f}" for s in seeds)
        drops = [clean.get(s, float("nan")) - runs[s]["clean_accuracy"] for s in seeds]
        planted = all(runs[s]["attack_success_rate"] >= 0.90 for s in seeds) and max(drops) <= 0.02
        lines.append(f"| {attack} | {tag or 'defaults'} | {json.loads(poison).get('rate')} | {asr} | "
                     f"{' / '.join(f'{d:+.3f}' for d in drops)} | {'yes' if planted else 'no'} (seeds {seeds}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", help="Attack names (default: every registered attack).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=12.0, help="Teacher epochs (the demo's: 12).")
    parser.add_argument("--option", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                        help="Override an attack option of the embedded setting (repeatable).")
    parser.add_argument("--poison", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                        help="Override a poison_dataset argument of the embedded setting (repeatable).")
    parser.add_argument("--rate", action="append", default=[], metavar="ATTACK=RATE",
                        help="Override the poison rate (see poison_dataset for what it means per attack).")
    parser.add_argument("--surrogate", action="append", default=[], metavar="ATTACK=EPOCHS",
                        help="Give the attack a surrogate: the demo classifier trained on the clean pretraining "
                             "split for EPOCHS epochs.")
    parser.add_argument("--surrogate-epsilon", action="append", default=[], metavar="ATTACK=EPSILON",
                        help="Train that surrogate adversarially with this L-inf budget.")
    parser.add_argument("--benchmark", default="digits",
                        help="The world whose victim and test splits are used (default: digits); another world's "
                             "records go to their own default file.")
    parser.add_argument("--tag", default="", help="A label for this setting in the tables.")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON-lines file the runs are appended to (default: the world's file in benchmarks/).")
    parser.add_argument("--summarize", type=Path, help="Only print the tables of an earlier results file.")
    parser.add_argument("--clean-asr", action="store_true",
                        help="Instead: a clean model per seed, evaluated with every attack's test trigger.")
    parser.add_argument("--compact", action="store_true", help="With --summarize: one row per setting.")
    args = parser.parse_args(argv)

    if args.summarize:
        records = read(args.summarize)
        clean = {r["seed"]: r["clean_accuracy"] for r in records if r["attack"] == "clean"}
        print(compact_table(records, clean) if args.compact else table(records, clean))
        return

    import datasets
    import torch

    datasets.disable_progress_bars()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from hf_backdoor_guard.attacks import ATTACKS
    from hf_backdoor_guard.benchmark.worlds import world

    names = args.attacks or ATTACKS.names()
    for name in names:
        ATTACKS[name]  # unknown names fail before any work
    options, poison = parse_overrides(args.option, "--option"), parse_overrides(args.poison, "--poison")
    rates, surrogates, epsilons = {}, {}, {}
    for items, parsed, flag in ((args.rate, rates, "--rate"), (args.surrogate, surrogates, "--surrogate"),
                                (args.surrogate_epsilon, epsilons, "--surrogate-epsilon")):
        for item in items:
            name, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"{flag} {item!r}: expected attack=number")
            parsed[name] = float(value)

    data = world(args.benchmark).load()
    if args.clean_asr:
        # its own file: these records have no poisoning setting, and the planting tables read --out
        clean_model_asr(names, args.seeds, args.epochs, data,
                        args.out or results_file("clean_model_asr", args.benchmark))
        return
    out = args.out or results_file("plant_attacks", args.benchmark)
    records = read(out)
    clean = {seed: clean_accuracy(seed, args.epochs, data, records, out) for seed in args.seeds}
    for name in names:
        runs = []
        for seed in args.seeds:
            record = run_one(name, seed, args, data, options.get(name, {}), poison.get(name, {}), rates.get(name),
                             surrogates.get(name), epsilons.get(name))
            append(out, record)
            runs.append(record)
            print(f"{name} seed {seed}: ASR {record['attack_success_rate']:.3f} C-Acc {record['clean_accuracy']:.3f} "
                  f"(clean {clean[seed]:.3f}) {record['seconds']:.0f} s", flush=True)
        print(table(runs, clean), flush=True)


if __name__ == "__main__":
    main()
