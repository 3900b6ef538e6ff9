"""The settings of one training run: recipes, the merge of preset, YAML and flags, and their checks.

Settings are layered: the preset's recipe, then the YAML ``--config`` (any BandPOConfig /
GRPOConfig field, TRL style, plus the run keys of `RUN_KEYS`), then the command line. Every
value is checked against the type its dataclass declares, and the whole configuration (ranges,
output folder, optional engines) is checked here, before any model or dataset is loaded.
"""

from __future__ import annotations

import difflib
import enum
import importlib.util
import json
import math
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # SmolLM2-135M on 2 CPU cores: ~20 s per generation of 32 completions, then two off-policy updates.
    "default": {
        "max_steps": 24,
        "eval_problems": 64,
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 16,
        "num_generations": 8,
        "steps_per_generation": 2,
        "max_completion_length": 12,
    },
    # About a minute with SmolLM2 (seconds with a tiny model): one generation, then three off-policy
    # updates on it, as in the study, so that the rules already clip differently. 32 tokens as in the
    # study: with 16, a rule that lets the model switch to a worked answer is scored on truncated text.
    "fast": {
        "max_steps": 4,
        "eval_problems": 16,
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 8,
        "num_generations": 8,
        "steps_per_generation": 4,
        "max_completion_length": 32,
    },
    # `bandpo compare --preset study` (docs/study): the paper's regime of 4 updates per generation
    # (each on 2 of the generation's 8 groups of 8), T = 1, room for a short worked answer, and a
    # 128-problem held-out set scored greedily and by pass@8.
    "study": {
        "max_steps": 16,
        "eval_problems": 128,
        "eval_samples": 8,
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 16,
        "num_generations": 8,
        "steps_per_generation": 4,
        "max_completion_length": 32,
        "save_strategy": "no",
    },
}
"""Recipes: GRPOConfig fields and run keys."""
DEFAULT_CLIP_METHODS = ("band", "clip", "clip-higher", "dcpo")
"""The clip methods ``bandpo compare`` runs unless told otherwise: the four of the paper's comparison."""
STUDY_CLIP_METHODS = (*DEFAULT_CLIP_METHODS, "band-relax", "band-upper", "band-lower")
STUDY_SEEDS = (0, 1, 2, 3, 4)
COMPARISON_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "study": (STUDY_CLIP_METHODS, STUDY_SEEDS),
}
"""(clip methods, seeds) of ``bandpo compare --preset P`` without flags, where they differ from
(`DEFAULT_CLIP_METHODS`, seed 0): for the study, exactly the runs committed in docs/study, in their
order, so that the bare command reproduces (and resumes) that folder."""


def comparison_defaults(preset: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(clip methods, seeds) that ``bandpo compare --preset preset`` runs without --clip-methods / --seeds."""
    return COMPARISON_DEFAULTS.get(preset, (DEFAULT_CLIP_METHODS, (0,)))
COMMON_SETTINGS: dict[str, Any] = {
    "temperature": 1.0,
    "beta": 0.0,
    "loss_type": "grpo",
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 8,
    "save_total_limit": 1,
    "report_to": ["tensorboard"],
    "use_cpu": True,
    "bf16": False,
    "disable_tqdm": True,
    "shuffle_dataset": True,
    "seed": 42,
    "output_dir": "bandpo-train",
}
"""GRPOConfig fields every recipe shares; beta 0 skips the reference model."""
RUN_KEYS = {
    "model_name_or_path": "model",
    "dataset_name": "dataset",
    "dataset_train_split": "split",
    "prompt_column": "prompt_column",
    "answer_column": "answer_column",
    "eval_problems": "eval_problems",
    "eval_samples": "eval_samples",
    "held_out_seed": "held_out_seed",
}
"""YAML keys (TRL script style) that are not GRPOConfig fields, and the RunSettings field each sets."""
FINGERPRINT_NAMES = {
    "bandpo_clip_method": "clip_method",
    "bandpo_divergence": "divergence",
    "bandpo_upper_max": "upper_max",
    "bandpo_dcpo_eps_low": "dcpo_eps_low",
    "bandpo_dcpo_eps_high": "dcpo_eps_high",
}
"""BandPOConfig fields renamed after runs were recorded, and the name a run's fingerprint keeps for each:
the fingerprint is an on-disk format, so finished runs (docs/study) still match after the rename."""


@dataclass
class RunSettings:
    """Everything one training run needs; ``trainer_fields`` become ``BandPOConfig(**trainer_fields)``."""

    model: str = "smollm2"
    dataset: str | None = None
    split: str = "train"
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    eval_problems: int = 64
    eval_samples: int = 0
    held_out_seed: int | None = None
    resume: bool = False
    overwrite: bool = False
    trainer_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        return Path(self.trainer_fields["output_dir"])

    def evaluation_key(self) -> dict[str, Any]:
        """What the held-out evaluation of the base model depends on (runs equal here share it)."""
        keys = ("model", "dataset", "split", "prompt_column", "answer_column", "eval_problems", "eval_samples",
                "held_out_seed")
        key = {name: getattr(self, name) for name in keys}
        return {**key, "max_completion_length": self.trainer_fields.get("max_completion_length")}

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide a run's outcome, as JSON: a finished run is reused only if they match.

        Trainer fields appear under their recorded names (`FINGERPRINT_NAMES`).
        """
        fields = {
            FINGERPRINT_NAMES.get(key, key): value for key, value in self.trainer_fields.items() if key != "output_dir"
        }
        return json.loads(json.dumps({**self.evaluation_key(), "trainer_fields": fields}, default=str))


def describe_type(annotation: Any) -> str:
    """``annotation`` as a reader would write it (``float``, ``int or None``, ``one of 'no', 'steps'``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arm) for arm in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(whether ``value`` fits ``annotation``, the value to use).

    YAML 1.1 reads ``1e-5`` (no dot) as a string: a string that parses as a number is taken for a
    float field. Annotations this check does not model (a class of its own) are left to the
    config's own checks.
    """
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            fits, converted = coerce(value, arm)
            if fits:
                return True, converted
        return False, value
    if annotation is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(annotation), value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or annotation in (list, tuple):
        arms = typing.get_args(annotation)
        fits = isinstance(value, list) and all(coerce(item, arms[0])[0] for item in value) if arms else isinstance(value, list)
        return fits, value
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or value in {member.value for member in annotation}, value
    return True, value


def checked_value(source: str, name: str, value: Any, annotation: Any) -> Any:
    """``value`` (coerced) if it fits ``annotation``; else ValueError naming ``source``, the key and the type."""
    fits, converted = coerce(value, annotation)
    if not fits:
        raise ValueError(f"{source}: {name} must be {describe_type(annotation)}, got {value!r}")
    return converted


def read_yaml_config(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``; ValueError naming the file if it is missing, unreadable or not a mapping."""
    import yaml

    if not path.is_file():
        raise ValueError(f"--config: file {path} not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as error:
        raise ValueError(f"--config: cannot read {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"--config: {path} must hold a mapping of field: value, got {type(loaded).__name__}")
    return loaded


def build_settings(
    preset: str = "default",
    config: Path | None = None,
    run_overrides: dict[str, Any] | None = None,
    trainer_overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunSettings:
    """Preset < YAML ``config`` < overrides, merged and type-checked; unknown keys are errors.

    ``run_overrides`` set RunSettings fields and ``trainer_overrides`` BandPOConfig fields; None
    values leave the layers below alone.
    """
    from bandpo.integrations.trl import BandPOConfig

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    run_types = typing.get_type_hints(RunSettings)
    # bandpo_upper_max also takes text, for TRL's command-line parser only: YAML and flags give None or a number
    trainer_types = {**typing.get_type_hints(BandPOConfig), "bandpo_upper_max": float | None}
    run_values: dict[str, Any] = {}
    trainer_values = dict(COMMON_SETTINGS)

    def apply(source: str, values: dict[str, Any], yaml_keys: bool) -> None:
        for key, value in values.items():
            if yaml_keys and key in RUN_KEYS:
                run_values[RUN_KEYS[key]] = checked_value(source, key, value, run_types[RUN_KEYS[key]])
            elif not yaml_keys and key in run_types:
                run_values[key] = checked_value(source, key, value, run_types[key])
            elif key in trainer_types:
                trainer_values[key] = checked_value(source, key, value, trainer_types[key])
            else:
                close = difflib.get_close_matches(str(key), [*trainer_types, *RUN_KEYS], n=1)
                raise ValueError(
                    f"{source}: unknown key {key!r}: not a BandPOConfig/GRPOConfig field nor one of {', '.join(RUN_KEYS)}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                )

    apply(f"preset {preset}", PRESETS[preset], yaml_keys=True)
    if config is not None:
        apply("--config", read_yaml_config(config), yaml_keys=True)
    apply("command line", {k: v for k, v in (run_overrides or {}).items() if v is not None}, yaml_keys=False)
    apply("command line", {k: v for k, v in (trainer_overrides or {}).items() if v is not None}, yaml_keys=False)
    settings = RunSettings(**run_values, resume=resume, overwrite=overwrite, trainer_fields=trainer_values)
    check_ranges(settings)
    return settings


SEED_RANGE = (0, 2**32 - 1)
"""The seeds every generator the run seeds accepts (numpy's is the narrowest)."""
AT_LEAST_ONE = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length")
"""Trainer fields that train nothing, or fail after the model is loaded, below 1."""
POSITIVE_FINITE = ("learning_rate", "temperature")
"""Trainer fields that must be finite and > 0 (0 learns nothing, or divides the logits by 0)."""


def check_ranges(settings: RunSettings) -> None:
    """ValueError for values of the right type outside their range, whichever layer set them."""
    fields = settings.trainer_fields
    if not settings.eval_problems >= 1:
        raise ValueError(f"eval_problems (--eval-problems) must be >= 1, got {settings.eval_problems}")
    if not settings.eval_samples >= 0:
        raise ValueError(f"eval_samples (--eval-samples) must be >= 0, got {settings.eval_samples}")
    if not fields.get("max_steps", 1) >= 1:
        raise ValueError(f"max_steps (--steps) must be >= 1, got {fields['max_steps']}")
    for name in AT_LEAST_ONE:
        if name in fields and not fields[name] >= 1:
            raise ValueError(f"{name} must be >= 1, got {fields[name]}")
    for name in POSITIVE_FINITE:
        if name in fields and not (math.isfinite(fields[name]) and fields[name] > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {fields[name]}")
    for name, value in (("seed (--seed, --seeds)", fields.get("seed")), ("held_out_seed", settings.held_out_seed)):
        if value is not None and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            raise ValueError(f"{name} must be in {SEED_RANGE[0]}..{SEED_RANGE[1]}, got {value}")


def check_output_dir(path: Path) -> None:
    """ValueError unless ``path`` is (or can be made) a folder this process can write to."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output-dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"--output-dir {path} is not writable: {error}") from error


def check_engines(config) -> None:
    """ValueError when the config asks for an engine or a tracker (``report_to``) that is not installed."""
    from transformers.integrations import get_available_reporting_integrations

    if getattr(config, "use_vllm", False) and importlib.util.find_spec("vllm") is None:
        raise ValueError("use_vllm: true needs vLLM, which is not installed (pip install vllm), or set use_vllm: false")
    requested = config.report_to if isinstance(config.report_to, list) else [config.report_to]
    available = get_available_reporting_integrations()
    missing = [name for name in requested if name not in ("none", "all", None) and name not in available]
    if missing:
        raise ValueError(
            f"report_to: {', '.join(missing)} not installed; installed trackers: {', '.join(available) or 'none'} "
            "(install it, or leave it out of report_to)"
        )

