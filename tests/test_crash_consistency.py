"""Crash consistency of ``bandpo compare`` (issue 17): killed with ``kill -9`` at 10 moments spread over
its life, or stopped with SIGINT, and resumed each time by the same command, a comparison ends with the
table of an uninterrupted one (wall times aside), and at every moment every file it reads back is
whole: no half line, no duplicate or missing step.

The comparison (2 rules x 2 seeds x 2 steps on the tiny model) runs in children forked by a
multiprocessing fork server that imported the libraries once, never forked from the test process:
a child killed while holding a lock it shares with its parent (tqdm's multiprocessing write lock,
created by earlier tests) deadlocked the next children and the test process itself, and the test
process's threads (torch's pools, torch.compile's workers) could hold a lock at the fork. Each child
computes on one thread (deterministic). The moments are events of the comparison's life (its lock
taken, the baseline written, a run's first metrics line, a summary, ...), detected by polling its
files: each attempt is killed just after the next event, so every phase is hit at least once.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from optional_packages import import_if_installed

import_if_installed("trl")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tiny_models import save_tiny_model  # noqa: E402

from bandpo.cli.main import main  # noqa: E402
from bandpo.training.files import read_json, read_jsonl  # noqa: E402
from bandpo.training.run import END_OF_TRAINING_KEY  # noqa: E402

RUNS = ("band-seed0", "clip-seed0", "band-seed1", "clip-seed1")
STEPS = 2
TIMEOUT_SECONDS = 300


def metrics_count(run: str, at_least: int) -> Callable[[Path], bool]:
    def reached(out: Path) -> bool:
        path = out / run / "metrics.jsonl"
        return path.is_file() and len(path.read_text().splitlines()) >= at_least
    return reached


def exists(name: str) -> Callable[[Path], bool]:
    return lambda out: (out / name).is_file() and (out / name).stat().st_size > 0


KILL_MOMENTS = (
    exists(".bandpo.lock"),  # planning
    exists("baseline.json"),  # the base model evaluated
    metrics_count("band-seed0", 1),  # inside a run's training
    exists("band-seed0/summary.json"),  # between two runs
    metrics_count("clip-seed0", 2),  # at the last step
    exists("clip-seed0/training.png"),  # after training, before the summary
    metrics_count("band-seed1", 1),
    exists("band-seed1/summary.json"),
    metrics_count("clip-seed1", STEPS + 1),  # the end-of-training record, during the final evaluation
    exists("table.md"),  # between the tables
)
SIGINT_MOMENTS = (metrics_count("band-seed0", 1), exists("clip-seed0/summary.json"), metrics_count("clip-seed1", 1))


@pytest.fixture(scope="module")
def argv(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("crash")
    (folder / "small.yaml").write_text("eval_problems: 4\n")
    model = save_tiny_model(folder / "tiny")
    return ["compare", "--preset", "fast", "--clip-methods", "band", "clip", "--seeds", "0", "1",
            "--steps", str(STEPS), "--model", str(model), "--config", str(folder / "small.yaml")]


FORK_SERVER = multiprocessing.get_context("forkserver")
FORK_SERVER.set_forkserver_preload(["torch", "bandpo.training.comparison", "bandpo.cli.main"])


def run_compare(argv: list[str], out: str, log_path: str) -> None:
    """The child: ``bandpo compare ... --output-dir out`` on one thread, its output appended to ``log_path``;
    exits with compare's status."""
    import torch

    torch.set_num_threads(1)
    status = 1
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the fork server's streams are not the log
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        status = main([*argv, "--output-dir", out])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def start(argv: list[str], out: Path) -> multiprocessing.process.BaseProcess:
    """Starts a child running ``bandpo compare ... --output-dir out`` (its output in out/../<name>.log)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    child = FORK_SERVER.Process(target=run_compare, args=(argv, str(out), str(out.parent / f"{out.name}.log")))
    child.start()
    return child


def poll(child: multiprocessing.process.BaseProcess, deadline: float, until: Callable[[Path], bool] | None = None,
         out: Path | None = None) -> bool:
    """Polls every 10 ms until the child exits (False) or ``until(out)`` holds while it runs (True); past
    ``deadline`` (time.monotonic) the child is killed and the test fails."""
    while time.monotonic() < deadline:
        if child.exitcode is not None:
            return False
        if until is not None and until(out):
            return True
        time.sleep(0.01)
    child.kill()
    child.join()
    pytest.fail(f"bandpo compare ran over {TIMEOUT_SECONDS} s")


def wait(child: multiprocessing.process.BaseProcess, until: Callable[[Path], bool] | None = None,
         out: Path | None = None, send: int = signal.SIGKILL) -> int:
    """The child's exit status (-N for signal N); with ``until``, ``send`` is sent to it as soon as
    ``until(out)`` holds."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    if until is not None and poll(child, deadline, until, out):
        os.kill(child.pid, send)
    poll(child, deadline)
    return child.exitcode


def check_files_whole(out: Path) -> None:
    """Every file the runner reads back parses; every metrics file holds steps 1..n once each, then at most
    one end-of-training record."""
    for name in ("baseline.json", "table.json", "statistics.json"):
        if (out / name).is_file():
            read_json(out / name, "", expected=list if name == "table.json" else dict)
    for run in RUNS:
        if (out / run / "summary.json").is_file():
            read_json(out / run / "summary.json", "")
        records = read_jsonl(out / run / "metrics.jsonl", "")
        steps = [record["step"] for record in records if END_OF_TRAINING_KEY not in record]
        assert steps == list(range(1, len(steps) + 1)), f"{run}: steps {steps}"
        ends = [i for i, record in enumerate(records) if END_OF_TRAINING_KEY in record]
        assert ends in ([], [len(records) - 1]), f"{run}: end-of-training records at {ends}"


def table_without_wall_times(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in json.loads((out / "table.json").read_text())]


@pytest.fixture(scope="module")
def uninterrupted(argv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "cmp"
    assert wait(start(argv, out)) == 0, (out.parent / "cmp.log").read_text()
    return out


def test_killed_at_ten_moments_and_resumed_it_ends_with_the_uninterrupted_table(argv, uninterrupted, tmp_path):
    out = tmp_path / "cmp"
    kills = 0
    for moment in KILL_MOMENTS:
        status = wait(start(argv, out), until=moment, out=out)
        assert status in (-signal.SIGKILL, 0)
        check_files_whole(out)
        if status == 0:  # finished before the moment: nothing left to interrupt
            break
        kills += 1
    # every moment is reached (the last, between the tables, may race with the comparison's exit)
    assert kills >= len(KILL_MOMENTS) - 1
    assert wait(start(argv, out)) == 0, (tmp_path / "cmp.log").read_text()
    check_files_whole(out)
    assert table_without_wall_times(out) == table_without_wall_times(uninterrupted)
    for run in RUNS:
        steps = [r["step"] for r in read_jsonl(out / run / "metrics.jsonl", "") if END_OF_TRAINING_KEY not in r]
        assert steps == list(range(1, STEPS + 1))


def test_stopped_with_sigint_and_resumed_it_ends_with_the_uninterrupted_table(argv, uninterrupted, tmp_path):
    out = tmp_path / "cmp"
    for moment in SIGINT_MOMENTS:
        assert wait(start(argv, out), until=moment, out=out, send=signal.SIGINT) == 130
        check_files_whole(out)
        assert not (out / "table.json").exists()  # never a table with an unfinished run
    log = (tmp_path / "cmp.log").read_text()
    assert "not finished: band-seed0, clip-seed0, band-seed1, clip-seed1" in log
    assert wait(start(argv, out)) == 0, (tmp_path / "cmp.log").read_text()
    check_files_whole(out)
    assert table_without_wall_times(out) == table_without_wall_times(uninterrupted)


def test_a_second_compare_on_the_folder_is_refused_and_the_first_ends_with_the_uninterrupted_table(
    argv, uninterrupted, tmp_path
):
    """Two real ``compare`` processes on one folder (issue 17, 2: both used to exit 0 and interleave one
    run's metrics): the second, started while the first trains, exits 2 naming the first; the first is
    undisturbed."""
    out = tmp_path / "cmp"
    first = start(argv, out)
    assert poll(first, time.monotonic() + TIMEOUT_SECONDS, metrics_count("band-seed0", 1), out), (
        "the first compare ended before the second could start"
    )
    second = start(argv, out)
    assert wait(second) == 2
    assert f"is in use by PID {first.pid} on " in (tmp_path / "cmp.log").read_text()
    assert wait(first) == 0, (tmp_path / "cmp.log").read_text()
    check_files_whole(out)
    assert table_without_wall_times(out) == table_without_wall_times(uninterrupted)
