"""`bandpo train` / `bandpo compare` end to end on a tiny local model, and every bad configuration."""

import json
import os

import pytest

pytest.importorskip("trl")
os.environ["HF_HUB_OFFLINE"] = "1"

from tiny_models import save_tiny_model  # noqa: E402

from bandpo.cli import compare, train  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny")))


def test_fast_preset_writes_metrics_plots_and_summary(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    status = train.main(["--preset", "fast", "--model", tiny_model_dir, "--output-dir", str(out), "--steps", "4"])
    assert status == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "clip_ratio/region_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all("clip_ratio/low_p_high_share" in r and "bounds/lower_mean" in r for r in steps)
    assert (out / "training.png").stat().st_size > 10_000
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["method"] == "band" and summary["eval_count"] == 16
    assert 0 <= summary["accuracy_before"] <= 1 and 0 <= summary["accuracy_after"] <= 1
    assert "held-out accuracy" in capsys.readouterr().out


def test_resume_continues_from_last_checkpoint(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    common = ["--preset", "fast", "--model", tiny_model_dir, "--output-dir", str(out)]
    assert train.main(common + ["--steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    assert train.main(common + ["--steps", "4", "--resume"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "clip_ratio/region_mean" in r] == [1, 2, 3, 4]


def test_yaml_config_sets_grpo_fields(tmp_path, tiny_model_dir):
    config = tmp_path / "config.yaml"
    config.write_text("clip_method: dcpo\nmax_steps: 2\nnum_generations: 2\nper_device_train_batch_size: 4\n")
    args = train.add_train_arguments(train.argparse.ArgumentParser()).parse_args(
        ["--config", str(config), "--model", tiny_model_dir, "--steps", "3"]
    )
    settings = train.build_settings(args)
    assert settings.trainer_fields["clip_method"] == "dcpo"
    assert settings.trainer_fields["num_generations"] == 2
    assert settings.trainer_fields["max_steps"] == 3  # flags win over YAML


@pytest.mark.parametrize(
    "flags, yaml_text, message",
    [
        (["--method", "ppo"], None, "invalid choice: 'ppo'"),
        (["--delta", "0"], None, "--delta must be > 0"),
        (["--delta", "-0.1"], None, "--delta must be > 0"),
        (["--model", "/nonexistent/model"], None, "local path /nonexistent/model not found"),
        (["--model", "missing.gguf"], None, "GGUF file missing.gguf not found"),
        (["--model", "no-such-org/no-such-model"], None, "neither a local path nor a cached hub model"),
        ([], "delta_band: 0.1\n", "unknown key 'delta_band'"),
        ([], "bandpo_delta: -1\n", "bandpo_delta must be a number > 0"),
        ([], "clip_method: bandpo\n", "clip_method must be one of"),
        (["--resume"], None, "no checkpoint-"),
    ],
)
def test_bad_configuration_fails_before_loading(tmp_path, tiny_model_dir, capsys, monkeypatch, flags, yaml_text, message):
    import bandpo.training.models as models

    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda source: pytest.fail("model loaded"))
    argv = ["--model", tiny_model_dir, "--output-dir", str(tmp_path / "run")] + flags
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        argv += ["--config", str(tmp_path / "c.yaml")]
    try:
        status = train.main(argv)
    except SystemExit as exit_:  # argparse choices
        status = exit_.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_columns_fail_before_loading(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import bandpo.training.models as models

    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda source: pytest.fail("model loaded"))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(20)))
    assert train.main(["--model", tiny_model_dir, "--dataset", str(data)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) prompt" in err and "it has question, answer" in err


def test_compare_writes_table_and_figure(tmp_path, tiny_model_dir):
    out = tmp_path / "cmp"
    argv = ["--methods", "band", "clip", "--seeds", "0", "--model", tiny_model_dir, "--steps", "2", "--output-dir", str(out)]
    assert compare.main(argv) == 0
    rows = json.loads((out / "table.json").read_text())
    assert [row["method"] for row in rows] == ["band", "clip"]
    assert "| band | 0 | 2 |" in (out / "table.md").read_text()
    assert (out / "compare.png").stat().st_size > 10_000
