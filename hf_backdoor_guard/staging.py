"""The staging folder of a Hub publish: only our own files are ever replaced, deleted or uploaded.

It follows the rule of ``outputs``: the folder's marker records every name a publish
staged; the next publish replaces or deletes only those names and uploads only what
it staged itself, so files a user adds to the folder are neither deleted nor uploaded.
A publish writes into a scratch sub-folder first and then moves its entries up, with
every name recorded before it exists, so a publish killed at any point is cleaned up
by the next one, which then writes exactly what an uninterrupted run writes
(``tests/test_faults_publish.py`` kills one with SIGKILL to check it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .outputs import (
    check_output_dir,
    claim_output_dir,
    locked,
    record_outputs,
    recorded_outputs,
    remove_outputs,
)

OWNER = "publish"  # the owner of staging folders in their outputs marker
SCRATCH = ".publish-in-progress"  # written first; its entries are then moved up one by one


def check_staging_dir(output_dir: str | os.PathLike | None, names: list[str]) -> None:
    """Before any work: ``output_dir`` is usable, and none of ``names`` in it is a file of the user's."""
    if output_dir is None:
        return
    check_output_dir(output_dir, OWNER)
    _refuse_users_names(Path(output_dir), names)


def stage(output_dir: str | os.PathLike | None, kind: str, write: Callable[[Path], None]) -> Path:
    """Stage a publish into ``output_dir`` (a new temporary folder if None) and return the folder.

    ``write(scratch)`` fills a fresh scratch sub-folder; its entries then replace those
    of the previous publish, one rename each. Another publish into the same folder at
    the same time fails with a ``RuntimeError`` naming its process (``outputs.locked``).
    """
    if output_dir is None:
        output_dir = tempfile.mkdtemp(prefix=f"hbg-publish-{kind}-")
    folder = claim_output_dir(output_dir, OWNER)
    scratch = folder / SCRATCH
    with locked(folder, "publish"):
        remove_outputs(folder, [SCRATCH])  # left behind by a killed publish
        record_outputs(folder, [SCRATCH])
        scratch.mkdir()
        write(scratch)
        names = sorted(entry.name for entry in scratch.iterdir())
        try:
            _refuse_users_names(folder, names)
        except ValueError:
            remove_outputs(folder, [SCRATCH])
            raise
        remove_outputs(folder, [name for name in recorded_outputs(folder) if name != SCRATCH])
        record_outputs(folder, names)
        for name in names:
            os.replace(scratch / name, folder / name)
        remove_outputs(folder, [SCRATCH])  # empty now
    return folder


def staged_files(folder: str | os.PathLike) -> list[str]:
    """The files the last publish staged in ``folder``, relative to it: exactly what it uploads."""
    folder = Path(folder)
    files = []
    for name in recorded_outputs(folder):
        path = folder / name
        if name == SCRATCH:
            continue
        if path.is_dir():
            files += [p.relative_to(folder).as_posix() for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            files.append(name)
    return sorted(files)


def _refuse_users_names(folder: Path, names: list[str]) -> None:
    if not folder.is_dir():
        return
    ours = set(recorded_outputs(folder))
    theirs = [name for name in names if name not in ours and ((folder / name).exists() or (folder / name).is_symlink())]
    if theirs:
        raise ValueError(
            f"output_dir {folder} holds {theirs}, which this publish would write, but no earlier publish staged "
            "them there, so they are yours; move them away or choose another folder. Nothing was changed."
        )
