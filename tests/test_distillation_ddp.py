"""A 2-process DDP distillation run on CPU (gloo), launched the way accelerate's debug_launcher does.

``accelerate launch --cpu --num_processes 2`` starts only one process on these machines,
so the test forks two ranks itself. It picks a free port instead of debug_launcher's
fixed 29500, so that it does not collide with another DDP test running at the same time.
"""

import copy
import hashlib
import json
import socket
import sys
import tempfile
from pathlib import Path

import torch
from accelerate.utils import PrepareForLaunch, patch_environment
from torch.multiprocessing import start_processes

sys.path.insert(0, str(Path(__file__).parent))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    from tiny_classifiers import random_image_dataset, tiny_resnet, tiny_vit

    from hf_backdoor_guard import DistillationTrainer, DistillationTrainingArguments

    teacher, teacher_processor = tiny_resnet(seed=1)
    teacher_copy = copy.deepcopy(teacher).eval()
    student, processor = tiny_vit(seed=2)
    initial = _digest(student)
    ds = random_image_dataset(16, seed=3)
    args = DistillationTrainingArguments(
        output_dir=str(Path(out_dir) / "run"), use_cpu=True, report_to=[], per_device_train_batch_size=2,
        max_steps=3, save_strategy="no", logging_steps=1, learning_rate=1e-2, seed=0, disable_tqdm=True,
        eval_strategy="steps", eval_steps=3,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                  eval_dataset=ds, processing_class=processor,
                                  teacher_processing_class=teacher_processor)
    first_batch = next(iter(trainer.get_train_dataloader()))
    first = first_batch["pixel_values"]
    rank_rows = [round(float(image.sum()), 3) for image in first]
    with torch.no_grad():
        teacher_pixels = first_batch["teacher_pixel_values"]
        same_logits = torch.equal(trainer._teacher_logits(teacher_pixels),
                                  teacher_copy(pixel_values=teacher_pixels).logits)
    trainer.train()
    metrics = trainer.evaluate()
    result = {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "teacher_device": str(next(trainer.teacher.parameters()).device),
        "teacher_frozen": not any(p.requires_grad for p in trainer.teacher.parameters()),
        # prepared by the accelerator in evaluation mode: no DDP wrapper around a model that never trains
        "teacher_prepared": bool(getattr(trainer.teacher, "_is_accelerate_prepared", False)),
        "teacher_type": type(trainer.teacher).__name__,
        "teacher_in_eval_mode": not trainer.teacher.training,
        "teacher_logits_unchanged": same_logits,
        "initial": initial,
        "final": _digest(trainer.model),
        "first_batch": rank_rows,
        "eval_loss": metrics["eval_loss"],
        "steps": trainer.state.global_step,
    }
    (Path(out_dir) / f"rank{result['rank']}.json").write_text(json.dumps(result))


def test_two_process_distillation():
    out_dir = tempfile.mkdtemp(prefix="hbg-ddp-")
    with tempfile.NamedTemporaryFile() as rendezvous, patch_environment(
        world_size=2, master_addr="127.0.0.1", master_port=str(_free_port()), accelerate_mixed_precision="no",
        accelerate_debug_rdv_file=rendezvous.name, accelerate_use_cpu="yes", gloo_socket_ifname="lo",
        omp_num_threads="1",
    ):
        start_processes(PrepareForLaunch(_worker, debug=True), args=(out_dir,), nprocs=2, start_method="fork")
    results = [json.loads((Path(out_dir) / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    assert all("MULTI_CPU" in r["distributed_type"] for r in results)
    assert all(r["teacher_device"] == "cpu" and r["teacher_frozen"] for r in results)
    assert all(r["teacher_prepared"] and r["teacher_in_eval_mode"] for r in results)
    assert all(r["teacher_type"] == "ResNetForImageClassification" for r in results)
    assert all(r["teacher_logits_unchanged"] for r in results)
    assert all(r["steps"] == 3 for r in results)
    # DDP keeps the replicas identical, and they did learn
    assert results[0]["final"] == results[1]["final"] != results[0]["initial"]
    # each rank reads its own shard of the data, the evaluation loss is gathered over both
    assert len(results[0]["first_batch"]) == 2 and not set(results[0]["first_batch"]) & set(results[1]["first_batch"])
    assert results[0]["eval_loss"] == results[1]["eval_loss"]
