"""The processes of one launch (``accelerate launch``, ``torchrun``, a debug launcher, or none).

``generate_variations`` needs a rank, a world size, a barrier, and a way for the main
process to tell the others what it found (the folder lock held elsewhere, other
settings). All of it is ``torch.distributed``'s public API, used once a process group
exists; accelerate's ``PartialState`` is asked to start the group only when a launcher
prepared one (``WORLD_SIZE`` > 1), so a plain single-process call leaves accelerate's
global state alone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Processes:
    """Rank and world size of the current launch, with the few collectives generation uses."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list:
        """Every process's ``value``, in rank order, in every process."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def raise_together(self, error: BaseException | None) -> None:
        """Raise in every process when any process has ``error``: no process is left waiting at a barrier."""
        errors = self.gather(None if error is None else (type(error).__name__, str(error)))
        if error is not None:
            raise error
        for found in errors:
            if found is not None:
                kind = {"ValueError": ValueError}.get(found[0], RuntimeError)
                raise kind(found[1])


def current_processes() -> Processes:
    """The launch this process belongs to; one process when nothing was launched in parallel."""
    import torch.distributed as dist

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched and dist.is_available() and not dist.is_initialized():
        from accelerate import PartialState

        # Starts the process group the launcher prepared, with the right backend and device. On a machine
        # without GPUs under torchrun it reports one process although the group has several: read the
        # group itself below.
        PartialState()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Processes(rank=dist.get_rank(), world=dist.get_world_size())
    return Processes()


def host() -> str:
    return socket.gethostname()
