"""The files a run or a comparison writes and reads back: atomic writes, checked reads, one writer per folder.

- Atomic writes: a temporary file in the same folder, flushed and fsync'd, then renamed over the
  target (`write_text_atomic`). A reader, or a process killed at any moment, sees the old file or
  the new one, never a part of either.
- Checked reads: a file that cannot be parsed, or holds the wrong type, is a `CorruptFileError`
  naming the file and what to do (`read_json`, `read_jsonl`).
- One writer per folder: `lock_folder` takes an exclusive ``flock`` on ``.bandpo.lock`` in the
  folder and records the holder (PID, host, start time, command) in it. A second process is refused
  with `FolderLockedError` naming the holder. The kernel drops the lock when its process dies,
  however it dies, so the lock of a dead process is taken over without any guess about staleness.
"""

from __future__ import annotations

import atexit
import datetime
import fcntl
import json
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_FILE = ".bandpo.lock"
"""The lock file of an output folder (ignored by git)."""


class CorruptFileError(ValueError):
    """A file the runner reads back cannot be used; the message names it and what to do."""


class FolderLockedError(ValueError):
    """Another live process writes to the folder; the message names it (PID, host, start time)."""


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically: temp file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~current_umask())  # mkstemp makes 0600; give the mode open() would
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


def write_json_atomic(path: Path, value: Any) -> None:
    """``value`` as indented JSON, written with `write_text_atomic`."""
    write_text_atomic(path, json.dumps(value, indent=2))


def write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    """One JSON line per record, written with `write_text_atomic`."""
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def read_json(path: Path, remedy: str, expected: type = dict) -> Any:
    """The JSON value in ``path``; CorruptFileError naming the file and ``remedy`` if it is not JSON of
    type ``expected``."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}); {remedy}") from error
    if not isinstance(value, expected):
        raise CorruptFileError(f"{path} must hold a JSON {expected.__name__}, got {type(value).__name__}; {remedy}")
    return value


def read_jsonl(path: Path, remedy: str) -> list[dict]:
    """The records of a JSON-lines file ([] if there is none); CorruptFileError naming the file, the line
    and ``remedy`` for a line that is not a JSON object."""
    if not Path(path).is_file():
        return []
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise CorruptFileError(f"{path}, line {number}, is not valid JSON ({error}); {remedy}") from error
        if not isinstance(record, dict):
            raise CorruptFileError(f"{path}, line {number}, must be a JSON object; {remedy}")
        records.append(record)
    return records


@dataclass
class FolderLock:
    """An exclusive lock on an output folder, held by this process until `release`."""

    folder: Path
    handle: Any  # the open lock file; the flock lives as long as it is open

    def release(self) -> None:
        """Empty the holder record and drop the lock (idempotent)."""
        if self.handle is None:
            return
        self.handle.truncate(0)
        self.handle.close()  # closing drops the flock
        self.handle = None
        _HELD.pop(self.folder, None)


_HELD: dict[Path, FolderLock] = {}
"""The folders this process holds, so that taking one again (a second plan in one process) is a no-op."""


def describe_holder(text: str) -> str:
    """The holder recorded in a lock file, in words."""
    try:
        holder = json.loads(text)
        return f"PID {holder['pid']} on {holder['host']}, started {holder['started']} ({holder['command']})"
    except (ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


def lock_folder(folder: Path) -> FolderLock:
    """Take ``folder``'s lock for this process (made if missing); FolderLockedError names the live holder.

    The lock file is never deleted, only emptied on release: deleting it would let a process that
    opened the old file and one that creates a new one both hold "the" lock.
    """
    folder = Path(folder).resolve()
    if folder in _HELD:
        return _HELD[folder]
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = describe_holder(handle.read())
        handle.close()
        raise FolderLockedError(
            f"{folder} is in use by {holder}; wait for it to finish, or stop it, before writing there"
        ) from None
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bandpo", *sys.argv[1:]]) if sys.argv else "bandpo",
    }
    handle.seek(0)
    handle.truncate(0)
    handle.write(json.dumps(record))
    handle.flush()
    lock = FolderLock(folder, handle)
    _HELD[folder] = lock
    return lock


def release_all_locks() -> None:
    """Release every folder lock this process holds."""
    for lock in list(_HELD.values()):
        lock.release()


atexit.register(release_all_locks)
