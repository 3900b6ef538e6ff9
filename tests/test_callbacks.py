"""Ctrl-C during `bandpo train`: the first SIGINT saves at the end of the step and stops training;
a second one reaches the previous handler (abort)."""

from __future__ import annotations

import os
import signal

from transformers import TrainerControl, TrainerState, TrainingArguments

from bandpo.training.callbacks import GracefulInterruptCallback


def test_first_ctrl_c_saves_and_stops_second_reaches_previous_handler(tmp_path):
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        callback = GracefulInterruptCallback()
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        state, control = TrainerState(), TrainerControl()
        callback.on_train_begin(args, state, control)
        control = callback.on_step_end(args, state, control)
        assert not (control.should_save or control.should_training_stop)

        os.kill(os.getpid(), signal.SIGINT)
        assert callback.interrupted and received == []
        control = callback.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop

        os.kill(os.getpid(), signal.SIGINT)
        assert received == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
