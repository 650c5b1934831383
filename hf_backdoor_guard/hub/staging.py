"""The staging folder of a Hub publish: only our own files are ever replaced, deleted or uploaded.

It follows the rule of ``outputs``: the folder's marker records every file a publish
staged, by its relative path (``README.md``, ``data/train-00000-of-00001.parquet``);
the next publish replaces or deletes only those files and uploads only what it
staged itself, so files a user adds to the folder, or to a sub-folder of ours such
as ``data/``, are neither deleted nor uploaded. A publish writes into a scratch
sub-folder first and then moves its files up, with every name recorded before it
exists, so a publish killed at any point is cleaned up by the next one, which then
writes exactly what an uninterrupted run writes (``tests/test_faults_publish.py``
kills one with SIGKILL to check it).

Markers written before files were recorded one by one list whole sub-folders
(``data``); such a folder was ours whole, so the next publish removes it whole once
and records file by file from then on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from ..runtime.outputs import (
    check_output_dir,
    claim_output_dir,
    locked,
    record_outputs,
    recorded_outputs,
    remove_outputs,
)

OWNER = "publish"  # the owner of staging folders in their outputs marker
SCRATCH = ".publish-in-progress"  # written first; its files are then moved up one by one


def check_staging_dir(output_dir: str | os.PathLike | None, files: list[str]) -> None:
    """Before any work: ``output_dir`` is usable, and none of ``files`` (relative paths) in it is the user's."""
    if output_dir is None:
        return
    check_output_dir(output_dir, OWNER)
    _refuse_users_files(Path(output_dir), files)


def stage(output_dir: str | os.PathLike | None, kind: str, write: Callable[[Path], None]) -> Path:
    """Stage a publish into ``output_dir`` (a new temporary folder if None) and return the folder.

    ``write(scratch)`` fills a fresh scratch sub-folder; each file it wrote then replaces
    the file of the same path (one rename each), and files the previous publish staged
    that this one did not write are removed. Another publish into the same folder at
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
        files = sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file())
        try:
            _refuse_users_files(folder, files)
        except ValueError:
            remove_outputs(folder, [SCRATCH])
            raise
        # Files this publish rewrites stay recorded (a rename replaces each); the rest of the
        # earlier publish goes, old-style whole-folder records included. Stale ones are
        # removed before the new ones are recorded, so a whole-folder record cannot take them along.
        new = set(files)
        remove_outputs(folder, [name for name in recorded_outputs(folder) if name != SCRATCH and name not in new])
        record_outputs(folder, files)
        for file in files:
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / file, folder / file)
        remove_outputs(folder, [SCRATCH])  # only empty folders are left in it
    return folder


def staged_files(folder: str | os.PathLike) -> list[str]:
    """The files the last publish staged in ``folder``, relative to it: exactly what it uploads.

    These are the recorded files that exist. A recorded folder (only markers written
    before files were recorded one by one have them) was staged whole, so its files count.
    """
    folder = Path(folder)
    files = []
    for name in recorded_outputs(folder):
        path = folder / name
        if name == SCRATCH or path.is_symlink():
            continue
        if path.is_dir():
            files += [p.relative_to(folder).as_posix() for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            files.append(name)
    return sorted(set(files))


def _refuse_users_files(folder: Path, files: list[str]) -> None:
    """Refuse, before anything changes, to write a path where a file of the user's is in the way."""
    if not folder.is_dir():
        return
    recorded = set(recorded_outputs(folder))

    def ours(name: str) -> bool:  # recorded itself, or inside a folder an old marker recorded whole
        parts = name.split("/")
        return any("/".join(parts[:i]) in recorded for i in range(1, len(parts) + 1))

    theirs = []
    for file in files:
        parts = file.split("/")
        # The file itself, or a user's file (or link) where one of its folders must be.
        blocking = [path for path in ("/".join(parts[:i]) for i in range(1, len(parts)))
                    if not ours(path) and ((folder / path).is_symlink() or _is_non_folder(folder / path))]
        target = folder / file
        if not ours(file) and (target.exists() or target.is_symlink()):
            blocking.append(file)
        theirs += blocking
    theirs = list(dict.fromkeys(theirs))  # a blocking folder is named once, however many files it blocks
    if theirs:
        raise ValueError(
            f"output_dir {folder} holds {theirs}, which this publish would write, but no earlier publish staged "
            "them there, so they are yours; move them away or choose another folder. Nothing was changed."
        )


def _is_non_folder(path: Path) -> bool:
    return path.exists() and not path.is_dir()
