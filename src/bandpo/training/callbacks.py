"""Trainer callbacks for ``bandpo train``: JSONL metrics, a compact progress bar, clean Ctrl-C."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

PROGRESS_METRICS = {"reward": "reward", "entropy": "entropy", "clip_ratio/region_mean": "clip"}


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log record (with its step) as one JSON line to ``path`` (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


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


class GracefulInterruptCallback(TrainerCallback):
    """The first Ctrl-C saves a checkpoint at the end of the current step and stops; a second one aborts."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous_handler = None

    def _handle(self, signum, frame) -> None:
        self.interrupted = True
        signal.signal(signal.SIGINT, self._previous_handler)
        print("\nInterrupted: saving a checkpoint after this step (Ctrl-C again to abort).", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous_handler = signal.signal(signal.SIGINT, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous_handler is not None and not self.interrupted:
            signal.signal(signal.SIGINT, self._previous_handler)
