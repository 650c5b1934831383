"""The run folder: one cached output per stage, the settings that decided it, and the processes of a launch.

A run folder holds one entry per stage (``data/``, ``teacher/``, ``variations/``,
``detection.json``, ``student/``, ...) and ``stages.json``, which records for each stage
the settings that decide its output and whether it finished::

    {"teacher": {"settings": {"model": "small-resnet", "num_train_epochs": 12, ...},
                 "complete": true, "seconds": 5.1, "num_processes": 2}, ...}

A stage counts as finished only once its output was written completely: outputs are
written under a temporary name and renamed into place, and the record is marked
complete after that. A rerun with the same settings skips finished stages; a rerun
with other settings is refused before any work, naming the option that changed
(:meth:`RunFolder.check`), unless the earlier attempt left nothing on disk (it failed
before writing anything), or :meth:`RunFolder.discard` removed it first. A stage never
writes over a path it did not record, so a folder of the user's is never replaced.

Several launches may share a run folder when they run different stages (the recipes
train the teacher while the variations are generated): the records are updated under
a lock. One stage is run by one launch at a time.

Under ``accelerate launch`` / ``torchrun`` every process calls the same stage functions:
training stages run in all processes (the ``Trainer`` handles DDP), the main process
writes files and ``stages.json``, and the others wait on a barrier before reading them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..runtime.outputs import read_marker, record_outputs, write_json_atomic

logger = logging.getLogger(__name__)

RECORD = "stages.json"
_TMP_PREFIX = ".tmp-"


def process_state():
    """The processes of the current launch (``accelerate launch``, ``torchrun``, or one): rank, world, barrier.

    The same helper ``generate_variations`` uses (:mod:`hf_backdoor_guard.runtime.processes`).
    """
    from ..runtime.processes import current_processes

    return current_processes()


def settings_differences(recorded: dict, planned: dict) -> list[str]:
    """``"option: was X, now Y"`` for every option whose value differs (JSON-normalised)."""
    recorded, planned = _normalise(recorded), _normalise(planned)
    lines = []
    for key in sorted(set(recorded) | set(planned), key=lambda k: (k not in planned, k)):
        if recorded.get(key, "<unset>") != planned.get(key, "<unset>"):
            lines.append(f"{key}: was {json.dumps(recorded.get(key, '<unset>'))}, "
                         f"now {json.dumps(planned.get(key, '<unset>'))}")
    return lines


def read_records(folder: str | os.PathLike) -> dict[str, dict]:
    """The stage records of the run folder ``folder`` (its ``stages.json``; {} when there is none), read without
    creating anything. An unreadable file raises (``ValueError``, ``OSError``)."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _normalise(settings: dict) -> dict:
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


class RunFolder:
    """A run's stage outputs and their records (see the module docstring).

    Args:
        path: the folder; created by the main process when missing.
        option: how the caller names the folder in messages (``--output-dir``).
        restart_hint: what a refused rerun may do instead (appended to the message).
    """

    def __init__(self, path: str | os.PathLike, *, option: str = "output_dir", restart_hint: str = ""):
        self.path = Path(path)
        self.option = option
        self.restart_hint = restart_hint
        self.state = process_state()
        if self.state.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            self._remove_temporaries()
        self.state.barrier()

    # --- processes -----------------------------------------------------------------------
    @property
    def is_main_process(self) -> bool:
        return self.state.is_main

    @property
    def num_processes(self) -> int:
        return self.state.world

    def wait(self) -> None:
        """Barrier: every process of the launch reaches this point before any goes on."""
        self.state.barrier()

    # --- records ---------------------------------------------------------------------------
    def records(self) -> dict[str, dict]:
        return read_records(self.path)

    def check(self, plan: dict[str, dict]) -> None:
        """Refuse, before any work, a plan whose stages differ from what the folder holds.

        ``plan`` maps stage names to their settings; a stage recorded with other settings
        (finished or not: a half-made output must not be mixed with new settings either)
        raises ``ValueError`` naming the stage and every option that changed.
        """
        records = self.records()
        for stage, settings in plan.items():
            if stage not in records or not (records[stage].get("complete") or self._left_files(records[stage])):
                continue  # never run, or an attempt that failed before writing anything: free to start anew
            changed = settings_differences(records[stage].get("settings", {}), settings)
            if changed:
                raise ValueError(
                    f"{self.path} holds a run whose '{stage}' stage was made with other settings "
                    f"({'; '.join(changed)}). Use another {self.option}{self.restart_hint}."
                )

    def is_complete(self, stage: str, settings: dict) -> bool:
        """Whether ``stage`` finished with ``settings`` (a different record raises, as in :meth:`check`)."""
        self.check({stage: settings})
        record = self.records().get(stage)
        return bool(record and record.get("complete") and (self.path / record["output"]).exists())

    def record(self, stage: str) -> dict | None:
        return self.records().get(stage)

    def _paths(self, record: dict) -> list[Path]:
        """The output and the partial work (checkpoints) a record names, inside this folder."""
        names = [record.get("output"), *record.get("partial", [])]
        return [self.path / name for name in names if name]

    def _left_files(self, record: dict) -> bool:
        return any(path.exists() for path in self._paths(record))

    @contextlib.contextmanager
    def _records_lock(self) -> Iterator[None]:
        """Main process: an exclusive ``flock`` on the folder itself while the records are read and rewritten.

        Launches running different stages in one folder (separate ``accelerate launch`` calls)
        would otherwise lose each other's updates. The folder is locked, not a lock file, so
        nothing is left behind; where ``flock`` is missing or refused (Windows, some network
        file systems) the update goes on unlocked.
        """
        try:
            import fcntl

            handle = os.open(self.path, os.O_RDONLY)
        except (ImportError, OSError):
            yield
            return
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                logger.debug("Could not lock %s; updating its records unlocked", self.path)
            yield
        finally:
            os.close(handle)  # closing releases the lock

    def _write_record(self, stage: str, *, new: bool = False, **values: Any) -> None:
        if not self.is_main_process:
            return
        with self._records_lock():
            records = self.records()
            records[stage] = {**({} if new else records.get(stage, {})), **values}
            write_json_atomic(self.path / RECORD, records)

    def discard(self, stage: str) -> list[str]:
        """Remove ``stage``'s output, its partial work and its record, so that it runs anew with any settings.

        Only the paths the record names are removed (what a stage of this folder wrote);
        returns their names. Called by every process of a launch; the main one removes.
        """
        removed: list[str] = []
        if self.is_main_process:
            with self._records_lock():
                records = self.records()
                record = records.pop(stage, None)
                for path in self._paths(record or {}):
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
                    else:
                        continue
                    removed.append(path.name)
                if record is not None:
                    write_json_atomic(self.path / RECORD, records)
            if removed:
                logger.info("Removed %s of stage %s from %s", removed, stage, self.path)
        self.wait()
        return removed

    # --- running a stage -------------------------------------------------------------------
    def run_stage(self, stage: str, settings: dict, output: str, make: Callable[[], Any] | None,
                  load: Callable[[Path], Any], *, partial: Sequence[str] = ()):
        """Run ``stage`` unless it finished with these settings; return ``load(output_path)`` in every process.

        ``make()`` runs in every process (training stages need all of them; other stages
        check ``is_main_process`` themselves) and writes ``output`` inside the folder, using
        :meth:`write_dir` / :meth:`write_json` so that it appears complete or not at all. A
        dict it returns (in the main process) is kept in the record as ``details``.
        ``partial`` names what the stage keeps while it works (a checkpoint folder, from
        which a killed run resumes): recorded with the output, so that :meth:`check` and
        :meth:`discard` know it. An ``output`` or ``partial`` path that exists although no
        run of this stage recorded it is not ours: the stage is refused, and nothing is written.
        """
        if stage not in self.records():
            theirs = [name for name in (output, *partial) if (self.path / name).exists()]
            if theirs:
                raise ValueError(f"{self.path} holds {theirs}, which stage {stage} would write, but no run recorded "
                                 f"them in {self.path / RECORD}, so they are not ours: move them away or use another "
                                 f"{self.option}.")
        if self.is_complete(stage, settings):
            record = self.record(stage)
            logger.info("Stage %s: finished earlier (%.1f s), reusing %s", stage, record.get("seconds", 0.0),
                        self.path / output)
        else:
            self.wait()  # every process has seen the same records before the main one changes them
            logger.info("Stage %s: running", stage)
            self._record_in_marker(RECORD, output, f"{_TMP_PREFIX}{output}", *partial)
            self._write_record(stage, new=True, settings=_normalise(settings), output=output, complete=False,
                               **({"partial": list(partial)} if partial else {}))
            started = time.perf_counter()
            details = make() if make is not None else None
            self.wait()
            if self.is_main_process and not (self.path / output).exists():
                raise RuntimeError(f"Stage {stage} finished without writing {self.path / output}.")
            seconds = round(time.perf_counter() - started, 2)
            logger.info("Stage %s: done in %.1f s", stage, seconds)
            self._write_record(stage, complete=True, seconds=seconds,
                               num_processes=self.num_processes, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                               **({"details": _normalise(details)} if isinstance(details, dict) else {}))
            self.wait()
        return load(self.path / output)

    def _record_in_marker(self, *names: str) -> None:
        """Main process: where the folder is an output folder of ours (defend's ``stages/``), its marker lists
        what the stages write, so that ``--overwrite`` removes those and leaves a user's file there alone."""
        if self.is_main_process and read_marker(self.path) is not None:
            record_outputs(self.path, names)

    def write_dir(self, name: str, write: Callable[[Path], Any]) -> Path:
        """Main process: ``write(tmp_folder)``, then rename it to ``name`` (replacing an older, unfinished one)."""
        final = self.path / name
        if not self.is_main_process:
            return final
        tmp = self.path / f"{_TMP_PREFIX}{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        write(tmp)
        if final.exists():  # left by a run killed between the rename and its record: ours, and stale
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(tmp, final)
        return final

    def write_json(self, name: str, data: Any) -> Path:
        """Main process: write ``name`` atomically."""
        if self.is_main_process:
            write_json_atomic(self.path / name, data)
        return self.path / name

    def _remove_temporaries(self) -> None:
        # What a killed run left half-written: only the temporary names of outputs the records name (the
        # folder may be the user's, e.g. the one holding a recipe's --output_dir).
        for record in self.records().values():
            entry = self.path / f"{_TMP_PREFIX}{record.get('output')}"
            if record.get("output") and entry.exists():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def timings(self) -> dict[str, float]:
        """Seconds each finished stage took when it ran."""
        return {stage: record.get("seconds", 0.0) for stage, record in self.records().items()
                if record.get("complete")}


def output_finished(path: str | os.PathLike) -> str | None:
    """When the stage that wrote ``path`` finished, as the ``stages.json`` of the folder holding it says; None
    for a path no stage wrote (a Hub id, a folder of the user's) or one not finished.

    A stage that reads another's output keeps this in its settings, so that it is refused
    once that output was made again (the recipes' student of a teacher trained again).
    """
    path = Path(path)
    try:
        record = read_records(path.parent).get(path.name)
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("output") == path.name and record.get("complete"):
        return record.get("finished")
    return None


__all__ = ["RunFolder", "output_finished", "process_state", "read_records", "settings_differences"]
