"""Run settings: preset < YAML < flags, every value checked against its declared type and range."""

import json
import os
from pathlib import Path

import pytest
from optional_packages import import_if_installed

import_if_installed("trl")
os.environ["HF_HUB_OFFLINE"] = "1"

from bandpo.integrations.trl import BandPOConfig  # noqa: E402
from bandpo.training import settings as run_settings  # noqa: E402
from bandpo.training.settings import build_settings  # noqa: E402


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_layers_preset_then_yaml_then_flags(tmp_path):
    config = yaml_file(tmp_path, "bandpo_clip_method: dcpo\nmax_steps: 2\nnum_generations: 2\neval_problems: 7\n")
    settings = build_settings("fast", config, run_overrides={"eval_samples": 4, "model": None},
                              trainer_overrides={"max_steps": 3, "seed": None})
    fields = settings.trainer_fields
    assert fields["bandpo_clip_method"] == "dcpo" and fields["num_generations"] == 2  # YAML over preset
    assert fields["max_steps"] == 3  # flags over YAML
    assert fields["seed"] == 42 and fields["steps_per_generation"] == 4  # None flags leave the layers below
    assert (settings.eval_problems, settings.eval_samples, settings.model) == (7, 4, "smollm2")


def test_presets_compare_the_four_published_clip_methods():
    assert run_settings.DEFAULT_CLIP_METHODS == ("band", "clip", "clip-higher", "dcpo")


@pytest.mark.parametrize(
    "preset, folder", [("study", "study"), ("fast", "compare-fast")], ids=["docs/study", "docs/compare-fast"]
)
def test_committed_comparison_runs_are_still_reused(preset, folder):
    """The fingerprint keeps the recorded field names (clip_method, ...), so finished runs still match."""
    from bandpo.training.comparison import finished_summary

    runs = sorted((Path(__file__).parents[1] / "docs" / folder).glob("*-seed*"))
    assert len(runs) >= 4
    for run in runs:
        clip_method, seed = run.name.rsplit("-seed", 1)
        settings = build_settings(  # what plan_comparison builds for this run
            preset,
            run_overrides={"model": "smollm2", "held_out_seed": 0},
            trainer_overrides={"bandpo_clip_method": clip_method, "seed": int(seed), "max_steps": None,
                               "output_dir": str(run)},
        )
        assert settings.trainer_fields["bandpo_clip_method"] == clip_method
        summary = finished_summary(settings)  # ValueError if the settings no longer match
        assert summary is not None and summary["method"] == clip_method
        assert summary["settings"]["trainer_fields"]["clip_method"] == clip_method


def test_fingerprint_names_every_renamed_field_as_recorded(tmp_path):
    settings = build_settings("fast", trainer_overrides={
        "bandpo_clip_method": "band-relax", "bandpo_divergence": "tv", "bandpo_upper_max": 4.0,
        "bandpo_dcpo_eps_low": 0.1, "bandpo_dcpo_eps_high": 0.3, "bandpo_delta": 0.01, "output_dir": str(tmp_path),
    })
    fields = json.loads(json.dumps(settings.fingerprint()))["trainer_fields"]
    assert {key: fields[key] for key in ("clip_method", "divergence", "upper_max", "dcpo_eps_low", "dcpo_eps_high")} == {
        "clip_method": "band-relax", "divergence": "tv", "upper_max": 4.0, "dcpo_eps_low": 0.1, "dcpo_eps_high": 0.3
    }
    assert fields["bandpo_delta"] == 0.01 and not any(key.startswith("bandpo_") and key != "bandpo_delta" for key in fields)
    assert "output_dir" not in fields


def test_every_preset_builds_a_valid_trainer_config():
    for preset in run_settings.PRESETS:
        settings = build_settings(preset)
        config = BandPOConfig(**settings.trainer_fields)
        assert config.steps_per_generation * config.num_iterations > config.gradient_accumulation_steps, (
            f"preset {preset} never updates off-policy, so no clipping rule could bind"
        )


def test_study_preset_is_the_papers_update_regime():
    settings = build_settings("study")
    fields = settings.trainer_fields
    assert fields["steps_per_generation"] == 4 and fields["num_generations"] >= 8 and fields["temperature"] == 1.0
    assert fields["max_completion_length"] >= 32 and settings.eval_problems >= 128 and settings.eval_samples == 8


def test_yaml_numbers_without_a_dot_are_read_as_floats(tmp_path):
    settings = build_settings("fast", yaml_file(tmp_path, "learning_rate: 1e-5\n"))
    assert settings.trainer_fields["learning_rate"] == 1e-5


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate: abc\n", "--config: learning_rate must be float, got 'abc'"),
        ("eval_problems: abc\n", "--config: eval_problems must be int, got 'abc'"),
        ("model_name_or_path: 123\n", "--config: model_name_or_path must be str, got 123"),
        ("max_steps: 1.5\n", "--config: max_steps must be int, got 1.5"),
        ("use_cpu: 'yes'\n", "--config: use_cpu must be bool, got 'yes'"),
        ("report_to: 5\n", "--config: report_to must be None or str or list"),
        ("bandpo_delta: true\n", "--config: bandpo_delta must be float, got True"),
        ("delta_band: 0.1\n", "unknown key 'delta_band'"),
        ("clip_method: band\n", "unknown key 'clip_method': not a BandPOConfig/GRPOConfig field"),
        ("clip_method: band\n", "(did you mean 'bandpo_clip_method'?)"),
        ("upper_max: 5\n", "(did you mean 'bandpo_upper_max'?)"),
        ("bandpo_upper_max: abc\n", "--config: bandpo_upper_max must be float or None, got 'abc'"),
        ("max_steps: 0\n", "max_steps (--steps) must be >= 1, got 0"),
        ("eval_problems: 0\n", "eval_problems (--eval-problems) must be >= 1, got 0"),
        ("eval_samples: -1\n", "eval_samples (--eval-samples) must be >= 0, got -1"),
        ("- a\n- b\n", "must hold a mapping of field: value, got list"),
        ("learning_rate: [1\n", "--config: cannot read"),
    ],
)
def test_bad_yaml_values_are_named(tmp_path, text, message):
    with pytest.raises(ValueError) as error:
        build_settings("fast", yaml_file(tmp_path, text))
    assert message in str(error.value)


def test_unreadable_yaml_names_the_file(tmp_path):
    path = yaml_file(tmp_path, b"max_steps: \xff\xfe\n")
    with pytest.raises(ValueError, match=f"--config: cannot read {path}"):
        build_settings("fast", path)
    with pytest.raises(ValueError, match="--config: file .*missing.yaml not found"):
        build_settings("fast", tmp_path / "missing.yaml")


def test_flag_values_are_range_checked_like_yaml_values():
    with pytest.raises(ValueError, match=r"max_steps \(--steps\) must be >= 1, got 0"):
        build_settings("fast", trainer_overrides={"max_steps": 0})
    with pytest.raises(ValueError, match="preset must be one of default, fast, study"):
        build_settings("slow")


@pytest.mark.parametrize(
    "annotation, value, fits",
    [
        (float, 3, True), (float, True, False), (int, 3.0, False), (int | None, None, True),
        (list[str], ["a", "b"], True), (list[str], ["a", 1], False), (str | bool, False, True),
        (dict | str | None, {"a": 1}, True),
    ],
)
def test_type_check(annotation, value, fits):
    assert run_settings.coerce(value, annotation)[0] is fits


def test_output_dir_must_be_a_writable_folder(tmp_path, monkeypatch):
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run_settings.check_output_dir(file)
    run_settings.check_output_dir(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir()

    def read_only_filesystem(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(run_settings.tempfile, "TemporaryFile", read_only_filesystem)
    with pytest.raises(ValueError, match="--output-dir .* is not writable: .*Read-only file system"):
        run_settings.check_output_dir(tmp_path / "new" / "run")


def test_vllm_requested_but_not_installed(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "vllm" else real_find_spec(name))

    class Config:
        use_vllm = True

    with pytest.raises(ValueError, match="use_vllm: true needs vLLM"):
        run_settings.check_engines(Config())


def test_migrated_summaries_name_no_machine_path_and_are_still_reused(tmp_path):
    """Issue 18, 6: summaries recorded the absolute output_dir of the machine that ran them."""
    import shutil

    from bandpo.training.comparison import finished_summary
    from bandpo.training.run import RUN_FOLDER, relative_summary_paths

    committed = Path(__file__).parents[1] / "docs" / "compare-fast"
    copy = tmp_path / "compare-fast"
    for run in sorted(committed.glob("*-seed*")):
        (copy / run.name).mkdir(parents=True)
        for name in ("summary.json", "metrics.jsonl"):
            shutil.copy(run / name, copy / run.name / name)
    first = copy / "band-seed0" / "summary.json"
    first.write_text(json.dumps({**json.loads(first.read_text()), "output_dir": "/work/main/docs/compare-fast/x"}))
    rewritten = relative_summary_paths(copy)
    assert first in rewritten
    assert relative_summary_paths(copy) == []  # idempotent
    for run in sorted(copy.glob("*-seed*")):
        summary = json.loads((run / "summary.json").read_text())
        original = json.loads((committed / run.name / "summary.json").read_text())
        assert summary["output_dir"] == RUN_FOLDER and "/work/" not in json.dumps(summary)
        assert {k: v for k, v in summary.items() if k != "output_dir"} == {
            k: v for k, v in original.items() if k != "output_dir"
        }
        clip_method, seed = run.name.rsplit("-seed", 1)
        settings = build_settings("fast", run_overrides={"model": "smollm2", "held_out_seed": 0}, trainer_overrides={
            "bandpo_clip_method": clip_method, "seed": int(seed), "output_dir": str(run)})
        assert finished_summary(settings) == summary  # still reused: the fingerprint did not change
