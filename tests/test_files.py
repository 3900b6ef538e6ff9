"""Atomic writes, checked reads and one writer per folder (`bandpo.training.files`)."""

import json
import os
import signal
import socket

import pytest

from bandpo.training import files
from bandpo.training.files import (
    CorruptFileError,
    FolderLockedError,
    lock_folder,
    read_json,
    read_jsonl,
    write_jsonl_atomic,
    write_text_atomic,
)


def test_an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["summary.json"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~files.current_umask()  # as open() would make it


def test_a_write_cut_short_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write_jsonl_atomic(path, [{"step": 1}])

    def killed(source, target):
        raise KeyboardInterrupt  # what a signal raises between the temporary's fsync and the rename

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_jsonl_atomic(path, [{"step": 1}, {"step": 2}])
    assert read_jsonl(path, "") == [{"step": 1}] and os.listdir(tmp_path) == ["metrics.jsonl"]


@pytest.mark.parametrize(
    "text, message",
    [("", "is not valid JSON"), ('{"a": 1', "is not valid JSON"), ("[1, 2]", "must hold a JSON dict, got list")],
    ids=["empty", "truncated", "wrong-type"],
)
def test_a_corrupt_json_file_is_named_with_what_to_do(tmp_path, text, message):
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(CorruptFileError) as error:
        read_json(path, "delete it to train the run again")
    assert str(path) in str(error.value) and message in str(error.value)
    assert str(error.value).endswith("delete it to train the run again")


def test_a_truncated_jsonl_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n')
    with pytest.raises(CorruptFileError, match=f"{path}, line 2, is not valid JSON .*; retrain"):
        read_jsonl(path, "retrain")
    path.write_text('{"step": 1}\n[2]\n')
    with pytest.raises(CorruptFileError, match="line 2, must be a JSON object"):
        read_jsonl(path, "retrain")
    assert read_jsonl(tmp_path / "missing.jsonl", "retrain") == []


def hold_in_child(folder):
    """Fork a process that takes ``folder``'s lock and waits; returns its PID once it holds the lock."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only the standard library runs here
        try:
            lock_folder(folder)
            os.write(write_end, b"held")
            signal.pause()
        finally:
            os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 4) == b"held"
    os.close(read_end)
    return pid


def test_a_second_process_is_refused_naming_the_holder_and_takes_over_once_it_dies(tmp_path):
    folder = tmp_path / "run"
    pid = hold_in_child(folder)
    try:
        with pytest.raises(FolderLockedError) as error:
            lock_folder(folder)
        holder = json.loads((folder / files.LOCK_FILE).read_text())
        assert f"PID {pid} on {socket.gethostname()}, started {holder['started']}" in str(error.value)
    finally:
        os.kill(pid, signal.SIGKILL)  # dies holding the lock: its record stays in the file
        os.waitpid(pid, 0)
    lock = lock_folder(folder)  # the kernel dropped the dead process's lock
    assert json.loads((folder / files.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert lock_folder(folder) is lock  # a second plan in the same process holds it already
    lock.release()
    assert (folder / files.LOCK_FILE).read_text() == ""


def test_the_lock_file_is_ignored_by_git():
    from pathlib import Path

    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().splitlines()
    assert files.LOCK_FILE in ignored
