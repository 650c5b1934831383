"""Output folders: claimed before work, locked while in use, and only our own files ever removed.

Every command that writes a folder (demo, defend, compare, generation, Hub staging)
goes through :func:`claim_output_dir`. A folder is usable when it is new, empty, or
carries our marker file written by the same kind of job. The marker lists every
file or sub-folder the job wrote (:func:`record_outputs`), and
:func:`remove_outputs` deletes only names from that list, so a file a user put
into the folder is never deleted, whatever the job does later. A sub-folder a user
may add files to (``cleaned/``, a dataset's ``data/``) is recorded file by file
(:func:`write_folder_files`); a recorded sub-folder with a marker of its own (a
nested output folder such as ``model/`` or ``stages/``) is emptied through that
marker, so the user's files in it stay too.

:func:`locked` takes an advisory lock (``filelock``, i.e. ``fcntl.flock``: the
kernel drops it when the process dies, even on SIGKILL), so two runs cannot
write one folder at the same time; the second one fails with a message naming
the first one's process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

MARKER = ".hf-backdoor-guard.json"
LOCK = ".hf-backdoor-guard.lock"
_OWN_NAMES = (MARKER, LOCK, LOCK + ".holder")


def _is_own_file(name: str) -> bool:
    """Our marker and lock files, and the temporary files their atomic writes pass through."""
    return name in _OWN_NAMES or any(name.startswith(f".{own}.") and name.endswith(".tmp") for own in _OWN_NAMES)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: a kill leaves the old file or the new one."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the mode open() would
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, **dumps_options: Any) -> Path:
    """``json.dump`` to ``path`` atomically (indent 2 unless told otherwise)."""
    dumps_options.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(data, **dumps_options) + "\n")


def read_marker(path: str | os.PathLike) -> dict | None:
    """The marker of a folder we wrote (``{"owner", "outputs", ...}``), or None."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("owner"), str) else None


def claim_output_dir(path: str | os.PathLike, owner: str, option: str = "output_dir") -> Path:
    """Make ``path`` the output folder of an ``owner`` job (``"demo"``, ``"defend"``, ...) and return it.

    Refuses, with a ``ValueError`` naming ``option`` and what is in the way, a path that
    is a file, or a non-empty folder that was not written by an ``owner`` job. Nothing
    in the folder is touched by the check; the marker is written only once it passes.
    """
    path = Path(path)
    check_output_dir(path, owner, option)
    path.mkdir(parents=True, exist_ok=True)
    if read_marker(path) is None:
        write_json_atomic(path / MARKER, {"owner": owner, "outputs": []})
    return path


def check_output_dir(path: str | os.PathLike, owner: str, option: str = "output_dir") -> None:
    """The checks of :func:`claim_output_dir`, without creating anything (run them before any work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} exists and is not a folder.")
    if not path.is_dir():
        return
    marker = read_marker(path)
    if marker is not None:
        if marker["owner"] != owner:
            raise ValueError(
                f"{option} {path} was written by `{marker['owner']}`, not `{owner}`; choose another folder "
                "so neither run's files are overwritten."
            )
        return
    entries = sorted(entry.name for entry in path.iterdir() if not _is_own_file(entry.name))
    if entries:
        raise ValueError(
            f"{option} {path} is not empty and was not written by `{owner}` ({len(entries)} entries, e.g. "
            f"{entries[:3]}); choose a new or empty folder so none of your files is overwritten."
        )


def adopt_output_dir(path: str | os.PathLike, owner: str) -> None:
    """Give ``path`` a marker of its own that lists everything in it.

    For a sub-folder an earlier version recorded whole in its parent's marker (so all of
    it is ours): from now on it is an output folder of its own, and what is added to it
    later, by a user, is not ours.
    """
    path = Path(path)
    entries = sorted(entry.name for entry in path.iterdir() if not _is_own_file(entry.name))
    write_json_atomic(path / MARKER, {"owner": owner, "outputs": entries})


def claim_sub_folder(parent: str | os.PathLike, name: str, owner: str, option: str = "output_dir") -> Path:
    """Record sub-folder ``name`` of output folder ``parent`` and make it an output folder of its own (a marker).

    For a cache a user may drop files into (``defend``'s ``stages/``): removing it then
    removes what its marker lists, never the whole folder. One an earlier version recorded
    whole (all of it ours) is adopted with everything in it; an unrecorded folder holding
    files is the user's and refused, as :func:`claim_output_dir` refuses any.
    """
    parent = Path(parent)
    folder = parent / name
    if folder.is_dir() and read_marker(folder) is None and name in recorded_outputs(parent):
        adopt_output_dir(folder, owner)
    check_output_dir(folder, owner, option)
    record_outputs(parent, [name])
    return claim_output_dir(folder, owner, option)


def record_outputs(path: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (files or folders directly inside ``path``) to the outputs the marker owns."""
    path = Path(path)
    marker = read_marker(path)
    if marker is None:
        raise ValueError(f"{path} has no {MARKER}; claim it with claim_output_dir first.")
    outputs = list(marker.get("outputs") or [])
    for name in names:
        parts = name.split("/") if isinstance(name, str) else []
        if not parts or any(part in ("", ".", "..") for part in parts) or "\\" in name or name in _OWN_NAMES:
            raise ValueError(f"Only plain names or relative paths (sub/file) inside the folder can be recorded, "
                             f"got {name!r}.")
        if name not in outputs:
            outputs.append(name)
    write_json_atomic(path / MARKER, {**marker, "outputs": outputs})


def recorded_outputs(path: str | os.PathLike) -> list[str]:
    marker = read_marker(path)
    return list(marker.get("outputs") or []) if marker else []


def _selected(recorded: list[str], names: Iterable[str] | None) -> list[str]:
    """The recorded entries ``names`` select: each name, and every recorded path under it (``cleaned/...``)."""
    if names is None:
        return list(recorded)
    names = list(names)
    return [entry for entry in recorded if any(entry == name or entry.startswith(name + "/") for name in names)]


def remove_outputs(path: str | os.PathLike, names: Iterable[str] | None = None) -> list[str]:
    """Delete recorded outputs (all of them, or those ``names`` select); return what was removed.

    A name that was never recorded is left alone, so this can only delete what one of
    our jobs wrote, never a user's file. A name selects the entry itself and every
    recorded path below it. A recorded sub-folder holding a marker of its own is emptied
    through that marker (its user files stay); other recorded sub-folders are ours whole.
    Folders left empty by a removal go too. Removed names (and recorded names that no
    longer exist) leave the marker, so a user's file that later takes such a name is
    not ours to delete.
    """
    path = Path(path)
    recorded = recorded_outputs(path)
    wanted = _selected(recorded, names)
    removed, kept = [], set()
    for name in wanted:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            if read_marker(target) is not None:
                remove_outputs(target)
                if not _remove_if_only_ours(target):
                    kept.add(name)  # a user's files are left in it: still our folder, with our marker
                    continue
            else:
                shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            _prune_empty_parents(path, target)  # gone already; a folder it left empty goes too
            continue
        removed.append(name)
        _prune_empty_parents(path, target)
    gone = set(wanted) - kept
    if gone:
        marker = read_marker(path)
        write_json_atomic(path / MARKER, {**marker, "outputs": [name for name in recorded if name not in gone]})
    return removed


def _remove_if_only_ours(folder: Path) -> bool:
    """Remove a nested output folder if only our marker and lock files are left in it; whether it went."""
    entries = list(folder.iterdir())
    if not all(_is_own_file(entry.name) for entry in entries):
        return False
    for entry in entries:
        entry.unlink()
    folder.rmdir()
    return True


def _prune_empty_parents(root: Path, target: Path) -> None:
    """Remove the folders between ``root`` and ``target`` that a removal left empty (never ``root`` itself)."""
    parent = target.parent
    while parent != root and root in parent.parents and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def write_folder_files(path: str | os.PathLike, name: str, write) -> list[str]:
    """Write the sub-folder ``path/name`` file by file, recording each file; return the files written.

    ``write(scratch)`` fills a scratch folder (``.NAME.tmp``, recorded first, so a run
    killed here leaves only names the next run may replace). Then each file it wrote
    replaces the one of the same name, files an earlier run recorded under ``name/``
    that this one did not write are removed, and every other file in ``name/`` (the
    user's) stays as it is. A file of the user's under a name this write produces is
    refused with a ``ValueError`` before anything is replaced.
    """
    path = Path(path)
    scratch = f".{name}.tmp"
    if name in recorded_outputs(path):  # recorded whole by an earlier version: all of it was ours
        remove_outputs(path, [name])
    remove_outputs(path, [scratch])
    record_outputs(path, [scratch])
    write(path / scratch)
    files = sorted(p.relative_to(path / scratch).as_posix() for p in (path / scratch).rglob("*") if p.is_file())
    new = [f"{name}/{file}" for file in files]
    ours = set(recorded_outputs(path))
    theirs = [entry for entry in new if entry not in ours and (path / entry).exists()]
    if theirs:
        remove_outputs(path, [scratch])
        raise ValueError(f"{path / name} holds {theirs}, which this run would write, but no earlier run wrote "
                         "them there, so they are yours; move them away or choose another folder.")
    remove_outputs(path, [entry for entry in ours if entry.startswith(name + "/") and entry not in new])
    record_outputs(path, new)
    for file, entry in zip(files, new):
        (path / entry).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path / scratch / file, path / entry)
    remove_outputs(path, [scratch])
    return new


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str = "run", wait: bool = False) -> Iterator[None]:
    """Hold an advisory lock on folder ``path`` (which must exist) for the ``with`` block.

    With ``wait=False`` a folder locked by another process raises ``RuntimeError``
    naming that process; with ``wait=True`` the call blocks until it is free. The lock
    is per process: run it in one process of a multi-process launch (the main one).
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    lock = FileLock(str(path / LOCK), timeout=-1 if wait else 0)
    holder_file = path / (LOCK + ".holder")
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = json.loads(holder_file.read_text())
            who = f"process {holder.get('pid')} on {holder.get('host')}"
        except (OSError, ValueError):
            who = "another process"
        raise RuntimeError(
            f"{path} is in use by another {what} ({who}); wait for it to finish, or use another folder."
        ) from None
    try:
        write_json_atomic(holder_file, {"pid": os.getpid(), "host": socket.gethostname()})
        yield
    finally:
        lock.release()
