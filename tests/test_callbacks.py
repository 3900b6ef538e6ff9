"""SIGINT / SIGTERM during `bandpo train`: the first saves at the end of the step and stops training;
a second reaches the previous handler (abort). Metrics are rewritten atomically, record by record."""

from __future__ import annotations

import json
import os
import signal

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from bandpo.training.callbacks import GracefulInterruptCallback, JsonlMetricsCallback
from bandpo.training.interrupts import Interrupted, stop_on_signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_first_signal_saves_and_stops_second_reaches_previous_handler(tmp_path, signum):
    received = []
    previous = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        callback = GracefulInterruptCallback()
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        state, control = TrainerState(), TrainerControl()
        callback.on_train_begin(args, state, control)
        control = callback.on_step_end(args, state, control)
        assert not (control.should_save or control.should_training_stop)

        os.kill(os.getpid(), signum)
        assert callback.interrupted and callback.signum == signum and received == []
        control = callback.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop

        os.kill(os.getpid(), signum)
        assert received == [signum]
    finally:
        signal.signal(signum, previous)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_outside_training_a_signal_stops_at_once_with_128_plus_its_number(signum, status):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as interrupted, stop_on_signals():
        os.kill(os.getpid(), signum)
    assert interrupted.value.exit_status == status and signal.getsignal(signum) is before


def test_metrics_are_the_kept_records_then_one_line_per_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    callback = JsonlMetricsCallback(path, [{"step": 1, "loss": 0.5}])
    state = TrainerState()
    state.global_step = 2
    callback.on_log(None, state, TrainerControl(), logs={"loss": 0.25})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}
    ]
    assert os.listdir(tmp_path) == ["metrics.jsonl"]
