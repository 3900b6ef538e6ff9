"""Trainer callbacks for ``bandpo train``: JSONL metrics written atomically, a compact progress bar, and
the first SIGINT / SIGTERM deferred to the end of the step (`bandpo.training.interrupts`)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from bandpo.training.files import write_jsonl_atomic
from bandpo.training.interrupts import STOP_SIGNALS

PROGRESS_METRICS = {"reward": "reward", "entropy": "entropy", "clip_ratio/region_mean": "clip"}


class JsonlMetricsCallback(TrainerCallback):
    """Every log record (with its step) as one JSON line of ``path`` (main process only).

    The file is rewritten atomically at each record, after ``records`` (those kept from an earlier
    attempt): a reader, or a resume after ``kill -9``, never sees half a line.
    """

    def __init__(self, path: Path, records: list[dict] | None = None) -> None:
        self.path = Path(path)
        self.records = list(records or [])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.records.append({"step": state.global_step, **logs})
            write_jsonl_atomic(self.path, self.records)


class CompactProgressCallback(TrainerCallback):
    """One tqdm bar over optimizer steps showing reward, entropy and clip rate (replaces Trainer's bar)."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="bandpo train", unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            shown = {short: f"{logs[name]:.3g}" for name, short in PROGRESS_METRICS.items() if name in logs}
            if shown:
                self.bar.set_postfix(shown)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
"""What ``signal.signal`` takes and returns."""


class GracefulInterruptCallback(TrainerCallback):
    """The first SIGINT / SIGTERM during training saves a checkpoint at the end of the current step and
    stops; a second one reaches the handlers that were there before training (abort)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous_handlers: dict[int, SignalHandler] = {}

    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore_handlers()
        name = signal.Signals(signum).name
        print(f"\n{name}: saving a checkpoint after this step ({name} again to abort).", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous_handlers = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore_handlers()
