"""`bandpo train` / `bandpo compare` end to end on a tiny local model, and every bad configuration."""

import json
import os
from pathlib import Path

import pytest
from optional_packages import import_if_installed

import_if_installed("trl")
os.environ["HF_HUB_OFFLINE"] = "1"

from tiny_models import save_tiny_model  # noqa: E402

from bandpo.cli import compare, train  # noqa: E402
from bandpo.cli.main import build_parser  # noqa: E402


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
    assert summary["output_dir"] == "."  # relative to the run's folder: no machine path in committed data
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


def test_resume_after_a_hard_kill_drops_the_steps_logged_after_the_checkpoint(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    common = ["--preset", "fast", "--model", tiny_model_dir, "--output-dir", str(out)]
    assert train.main(common + ["--steps", "2"]) == 0
    # What `kill -9` during step 4 leaves: steps 3 and 4 logged, the newest checkpoint still step 2.
    metrics = out / "metrics.jsonl"
    step_record = [json.loads(line) for line in metrics.read_text().splitlines()][1]
    with metrics.open("a") as handle:
        for step in (3, 4):
            handle.write(json.dumps({**step_record, "step": step, "entropy": -1.0}) + "\n")
    assert train.main(common + ["--steps", "4", "--resume"]) == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if "clip_ratio/region_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["entropy"] != -1.0 for r in steps)  # the killed run's steps 3-4 were replaced


@pytest.mark.parametrize(
    "flags, yaml_text, message",
    [
        (["--clip-method", "ppo"], None, "invalid choice: 'ppo'"),
        (["--method", "band"], None, "unrecognized arguments: --method"),
        (["--delta", "0"], None, "bandpo_delta must be"),
        (["--delta", "-0.1"], None, "bandpo_delta must be"),
        (["--model", "/nonexistent/model"], None, "local path /nonexistent/model not found"),
        (["--model", "missing.gguf"], None, "GGUF file missing.gguf not found"),
        (["--model", "no-such-org/no-such-model"], None, "neither a local path nor a cached hub model"),
        ([], "delta_band: 0.1\n", "unknown key 'delta_band'"),
        ([], "bandpo_delta: -1\n", "bandpo_delta must be a number in [1e-06, 1000]"),
        ([], "bandpo_clip_method: bandpo\n", "bandpo_clip_method must be one of band, band-relax"),
        ([], "clip_method: band\n", "unknown key 'clip_method'"),
        (["--clip-method", "band-relax"], "epsilon: 1.5\n", "epsilon must be a number in [0, 1), got 1.5"),
        (["--clip-method", "band-relax"], "importance_sampling_level: sequence\n", "needs importance_sampling_level"),
        (["--resume"], None, "no complete checkpoint-"),
        (["--steps", "0"], None, "max_steps (--steps) must be >= 1, got 0"),
        ([], "max_steps: 0\n", "max_steps (--steps) must be >= 1, got 0"),
        ([], "learning_rate: abc\n", "learning_rate must be float, got 'abc'"),
        ([], "eval_problems: abc\n", "eval_problems must be int, got 'abc'"),
        ([], "model_name_or_path: 123\n", "model_name_or_path must be str, got 123"),
        ([], "save_strategy: sometimes\n", "sometimes"),
        ([], "max_steps: [1\n", "--config: cannot read"),
        (["--output-dir", "/proc/version"], None, "is a file, not a folder"),
        (["--dataset", "DATA_DIR/one-row.jsonl"], None, "has 1 row(s): it needs held-out rows and training rows"),
        (["--dataset", "DATA_DIR/numbers.jsonl"], None, "row 0 holds 5"),
        (["--dataset", "DATA_DIR/empty.jsonl"], None, "has no rows"),
        # issue 17, 4: these failed after loading the model, with a traceback
        ([], "per_device_train_batch_size: 0\n", "per_device_train_batch_size must be >= 1, got 0"),
        ([], "gradient_accumulation_steps: 0\n", "gradient_accumulation_steps must be >= 1, got 0"),
        ([], "learning_rate: .nan\n", "learning_rate must be a finite number > 0, got nan"),
        ([], "learning_rate: -1\n", "learning_rate must be a finite number > 0, got -1"),
        ([], "seed: -1\n", "seed (--seed, --seeds) must be in 0..4294967295, got -1"),
        (["--seed", "-5"], None, "seed (--seed, --seeds) must be in 0..4294967295, got -5"),
        ([], "temperature: 0\n", "temperature must be a finite number > 0, got 0"),
        ([], "max_completion_length: 0\n", "max_completion_length must be >= 1, got 0"),
        # issue 17, 3: trained 0 steps and reported "0.0% -> 0.0%"
        (["--dataset", "DATA_DIR/four.jsonl", "--eval-problems", "1"], None,
         "leaves 3 training row(s), but one generation draws 4 prompts"),
        (["--preset", "fast", "--dataset", "DATA_DIR/four.jsonl", "--eval-problems", "1"], None,
         "so no step would train"),
    ],
)
def test_bad_configuration_fails_before_loading(tmp_path, tiny_model_dir, capsys, monkeypatch, flags, yaml_text, message):
    import bandpo.training.models as models

    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda source: pytest.fail("model loaded"))
    (tmp_path / "one-row.jsonl").write_text('{"prompt": "1+1?", "answer": 2}\n')
    (tmp_path / "numbers.jsonl").write_text('{"prompt": 5, "answer": 2}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "four.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+1?", "answer": i + 1}) + "\n" for i in range(4)))
    flags = [flag.replace("DATA_DIR", str(tmp_path)) for flag in flags]
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
    argv = ["--clip-methods", "band", "band-relax", "--seeds", "0", "--model", tiny_model_dir, "--steps", "2",
            "--output-dir", str(out)]
    assert compare.main(argv) == 0
    rows = json.loads((out / "table.json").read_text())
    assert [row["method"] for row in rows] == ["band", "band-relax"]
    text = (out / "table.md").read_text()
    assert "| band | 0 | 2 |" in text and "| band-relax | 0 | 2 |" in text and "band − band-relax" in text
    summary = json.loads((out / "band-relax-seed0" / "summary.json").read_text())
    assert summary["method"] == "band-relax" and summary["settings"]["trainer_fields"]["clip_method"] == "band-relax"
    assert (out / "compare.png").stat().st_size > 10_000


def test_compare_clip_methods_flag(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import bandpo.training.models as models
    from bandpo.cli.main import build_parser

    parser = build_parser()
    bare = parser.parse_args(["compare", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "bare")])
    assert bare.clip_methods is None  # unset: the preset's defaults apply (fast: the four published rules)
    assert [prepared.config.bandpo_clip_method for prepared, _ in bare.configure(bare).runs] == [
        "band", "clip", "clip-higher", "dcpo"]
    args = parser.parse_args(["compare", "--clip-methods", "band-relax", "clip", "--model", tiny_model_dir,
                              "--output-dir", str(tmp_path / "cmp")])
    assert args.clip_methods == ["band-relax", "clip"]
    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda source: pytest.fail("model loaded"))
    plan = args.configure(args)
    configs = [prepared.config for prepared, _ in plan.runs]
    assert [config.bandpo_clip_method for config in configs] == ["band-relax", "clip"]
    assert configs[0].bound_rule().relax == (0.2, 0.28) and configs[0].epsilon_high == 0.28
    assert [prepared.settings.output_dir.name for prepared, _ in plan.runs] == ["band-relax-seed0", "clip-seed0"]
    for argv, message in [
        (["--clip-methods", "ppo"], "invalid choice: 'ppo'"),
        (["--methods", "band"], "unrecognized arguments: --methods"),
    ]:
        with pytest.raises(SystemExit):
            parser.parse_args(["compare", *argv])
        assert message in capsys.readouterr().err
    argv = ["--clip-methods", "band", "band", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "cmp")]
    assert compare.main(argv) == 2
    assert "--clip-methods lists band more than once" in capsys.readouterr().err


def test_train_clip_method_flag(tmp_path, tiny_model_dir, monkeypatch):
    import bandpo.training.models as models
    from bandpo.cli.main import build_parser

    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda source: pytest.fail("model loaded"))
    args = build_parser().parse_args([
        "train", "--clip-method", "band-relax", "--divergence", "tv", "--delta", "0.01", "--model", tiny_model_dir,
        "--output-dir", str(tmp_path / "run"),
    ])
    prepared = args.configure(args)
    rule = prepared.config.bound_rule()
    assert (rule.divergence, rule.delta, rule.relax) == ("tv", 0.01, (0.2, 0.28))
    assert train.describe_rule(prepared.config) == "band-relax (tv, delta 0.01, upper_max 10.0, relaxed to 0.2/0.28)"


def test_study_preset_path_over_two_rules_and_two_seeds_on_one_held_out_set(tmp_path, tiny_model_dir, monkeypatch):
    """The study's path end to end (2 steps per run on the tiny model, 8 held-out problems instead of 128),
    then resumed without retraining. The bare preset's rules and seeds: test_study_preset_defaults_*."""
    out = tmp_path / "study"
    config = tmp_path / "small-eval.yaml"
    config.write_text("eval_problems: 8\n")
    argv = ["--preset", "study", "--model", tiny_model_dir, "--steps", "2", "--output-dir", str(out),
            "--config", str(config), "--clip-methods", "band", "clip-higher", "--seeds", "0", "1"]
    assert compare.main(argv) == 0
    rows = json.loads((out / "table.json").read_text())
    assert [(row["method"], row["seed"]) for row in rows] == [(m, s) for s in (0, 1) for m in ("band", "clip-higher")]
    required = {"accuracy_before", "accuracy_after", "pass_at_8_before", "pass_at_8_after", "entropy_last_quarter",
                "clip_rate_off_policy", "low_p_high_share", "ppo_kl_off_policy", "clip_low_rate_off_policy",
                "clip_high_rate_off_policy", "low_p_pos_log_ratio", "low_p_neg_log_ratio"}
    assert all(required <= set(row) and row["steps"] == 2 for row in rows)
    assert all(row["ppo_kl_off_policy"] is not None for row in rows)  # step 2 is off-policy and logs it
    # One base-model evaluation serves every run: same held-out set for every method and seed.
    baseline = json.loads((out / "baseline.json").read_text())
    assert baseline["key"]["eval_problems"] == 8 and baseline["key"]["eval_samples"] == 8
    assert {(row["accuracy_before"], row["pass_at_8_before"]) for row in rows} == {
        (baseline["result"]["accuracy"], baseline["result"]["pass_at_k"])
    }
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["per_method"]["band"]["accuracy_after"]["n"] == 2
    assert {(d["method"], d["baseline"], d["field"]) for d in statistics["paired_differences"]} >= {
        ("band", "clip-higher", "accuracy_after"), ("band", "clip-higher", "pass_at_8_after")
    }
    text = (out / "table.md").read_text()
    assert "mean ± sd" in text and "band − clip-higher" in text
    for method in ("band", "clip-higher"):
        assert (out / f"{method}-seed1" / "metrics.jsonl").is_file()

    # Resuming retrains nothing: every run and the baseline are reused.
    import bandpo.training.comparison as comparison

    monkeypatch.setattr(comparison, "execute_run", lambda *a, **k: pytest.fail("a finished run was retrained"))
    monkeypatch.setattr(comparison, "evaluate_base_model", lambda *a, **k: pytest.fail("base model re-evaluated"))
    assert compare.main(argv) == 0
    assert json.loads((out / "table.json").read_text()) == rows


def test_compare_refuses_a_folder_holding_runs_with_other_settings(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "cmp"
    common = ["--clip-methods", "clip", "--model", tiny_model_dir, "--output-dir", str(out)]
    assert compare.main(common + ["--steps", "1"]) == 0
    assert compare.main(common + ["--steps", "2"]) == 2
    assert "holds a finished run with other settings" in capsys.readouterr().err


def test_an_unfinished_run_is_trained_again(tmp_path, tiny_model_dir):
    out = tmp_path / "cmp"
    argv = ["--clip-methods", "clip", "--model", tiny_model_dir, "--steps", "1", "--output-dir", str(out)]
    assert compare.main(argv) == 0
    summary_path = out / "clip-seed0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "interrupted": True, "wall_seconds": -1.0}))
    assert compare.main(argv) == 0
    assert json.loads(summary_path.read_text())["wall_seconds"] > 0


def test_compare_checks_its_configuration_before_loading(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import bandpo.training.models as models

    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda source: pytest.fail("model loaded"))
    (tmp_path / "c.yaml").write_text("learning_rate: [1\n")
    argv = ["--model", tiny_model_dir, "--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "cmp")]
    assert compare.main(argv) == 2
    assert "--config: cannot read" in capsys.readouterr().err


def test_study_preset_defaults_are_the_runs_committed_in_docs_study(monkeypatch):
    """``bandpo compare --preset study --output-dir docs/study`` alone plans exactly the committed runs."""
    import bandpo.training.comparison as comparison

    planned = {}
    monkeypatch.setattr(comparison, "plan_comparison",
                        lambda preset, clip_methods, seeds, *a, **k: planned.update(methods=clip_methods, seeds=seeds))
    args = build_parser().parse_args(["compare", "--preset", "study", "--output-dir", "docs/study"])
    args.configure(args)
    committed = {run.name for run in (Path(__file__).parents[1] / "docs" / "study").glob("*-seed*")}
    assert {f"{m}-seed{s}" for m in planned["methods"] for s in planned["seeds"]} == committed
    assert planned["methods"][:4] == list(compare.DEFAULT_CLIP_METHODS)  # the published four first, as recorded


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if anything loads a model: the checks must come first."""
    import bandpo.training.models as models

    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda source: pytest.fail("model loaded"))


def test_a_tracker_that_is_not_installed_fails_before_loading(tmp_path, tiny_model_dir, capsys, monkeypatch,
                                                               no_model_loading):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    (tmp_path / "c.yaml").write_text("report_to: wandb\n")
    argv = ["--model", tiny_model_dir, "--output-dir", str(tmp_path / "run"), "--config", str(tmp_path / "c.yaml")]
    assert train.main(argv) == 2
    assert "report_to: wandb not installed; installed trackers: tensorboard" in capsys.readouterr().err


def test_compare_refuses_a_negative_seed_before_loading(tmp_path, tiny_model_dir, capsys, no_model_loading):
    assert compare.main(["--seeds", "-1", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "cmp")]) == 2
    assert "seed (--seed, --seeds) must be in 0..4294967295, got -1" in capsys.readouterr().err


def finished_summary_text() -> str:
    return json.dumps({"output_dir": ".", "interrupted": False, "accuracy_after": 0.5, "settings": {}})


def test_train_into_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path, tiny_model_dir, capsys,
                                                                      no_model_loading):
    """Issue 17, 7: `train` silently deleted a finished run's metrics and overwrote its summary."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text(finished_summary_text())
    argv = ["--model", tiny_model_dir, "--output-dir", str(out)]
    assert train.main(argv) == 2
    assert "holds a finished run (summary.json); continue it with --resume, replace it with --overwrite" in (
        capsys.readouterr().err
    )
    (out / "summary.json").unlink()
    (out / "checkpoint-2").mkdir()
    assert train.main(argv) == 2
    assert "holds checkpoints of an unfinished run" in capsys.readouterr().err
    args = build_parser().parse_args(["train", *argv, "--overwrite"])
    assert args.configure(args).settings.overwrite
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", *argv, "--overwrite", "--resume"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("summary.json", "", "summary.json is not valid JSON"),
        ("summary.json", "[1]", "summary.json must hold a JSON dict, got list"),
        ("metrics.jsonl", '{"step": 1}\n{"step": 2, "lo', "metrics.jsonl, line 2, is not valid JSON"),
        ("baseline.json", '{"key": {}}', "baseline.json does not hold a base-model evaluation"),
        ("baseline.json", "{", "baseline.json is not valid JSON"),
    ],
)
def test_compare_names_a_corrupt_file_and_what_to_do_before_loading(tmp_path, tiny_model_dir, capsys, name, text,
                                                                     message, no_model_loading):
    """Issue 17, 5: these gave a traceback, or "Expecting value: line 1 column 1" without the file."""
    out = tmp_path / "cmp"
    (out / "clip-seed0").mkdir(parents=True)
    if name == "metrics.jsonl":  # read back only for a finished run
        (out / "clip-seed0" / "summary.json").write_text(finished_summary_text())
    (out / name if name == "baseline.json" else out / "clip-seed0" / name).write_text(text)
    assert compare.main(["--clip-methods", "clip", "--model", tiny_model_dir, "--output-dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error and ("delete" in error) and "Traceback" not in error


def test_resume_names_corrupt_metrics_and_skips_a_checkpoint_cut_short(tmp_path, tiny_model_dir, capsys,
                                                                        no_model_loading):
    from bandpo.training.run import last_checkpoint

    out = tmp_path / "run"
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (out / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hi')  # killed while saving
    assert last_checkpoint(out).name == "checkpoint-2"
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"st')
    assert train.main(["--model", tiny_model_dir, "--output-dir", str(out), "--resume"]) == 2
    assert f"{out / 'metrics.jsonl'}, line 2, is not valid JSON" in capsys.readouterr().err
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    assert train.main(["--model", tiny_model_dir, "--output-dir", str(out), "--resume"]) == 2
    error = capsys.readouterr().err
    assert "no complete checkpoint-* folder" in error and "checkpoint-2, checkpoint-4 cut short" in error


def test_resume_drops_the_stopped_attempts_end_of_training_record(tmp_path):
    """Issue 17, 12: after Ctrl-C and --resume, the interrupted run's end-of-training record stayed."""
    from bandpo.training.run import metrics_to_resume

    path = tmp_path / "metrics.jsonl"
    records = [{"step": 1, "loss": 0.1}, {"step": 2, "loss": 0.2}, {"step": 2, "train_runtime": 3.0},
               {"step": 3, "loss": 0.3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert metrics_to_resume(path, 2) == records[:2]


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_resume_skips_the_half_checkpoint(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    """Issue 17, 6: a raw traceback, then --resume picked the half-written checkpoint and crashed."""
    import errno

    from transformers import Trainer

    def disk_full(self, model, trial):
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "optimizer.pt"))

    monkeypatch.setattr(Trainer, "_save_checkpoint", disk_full)
    out = tmp_path / "run"
    common = ["--preset", "fast", "--model", tiny_model_dir, "--output-dir", str(out)]
    assert train.main(common + ["--steps", "1"]) == 1
    error = capsys.readouterr().err
    assert f"bandpo train: error: No space left on device ({out / 'checkpoint-1' / 'optimizer.pt'})" in error
    assert "Traceback" not in error
    assert train.main(common + ["--steps", "2", "--resume"]) == 2
    assert "no complete checkpoint-* folder" in capsys.readouterr().err


@pytest.mark.parametrize("signum, status", [(2, 130), (15, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_whole_compare_and_no_table_holds_an_unfinished_run(tmp_path, tiny_model_dir, capsys,
                                                                                monkeypatch, signum, status):
    """Issue 17, 1: Ctrl-C during band's run went on to train clip and tabulated band's partial run."""
    import bandpo.training.comparison as comparison
    from bandpo.training.interrupts import Interrupted

    trained = []

    def interrupted_run(prepared, before=None):
        trained.append(prepared.settings.output_dir.name)
        raise Interrupted(signum)

    monkeypatch.setattr(comparison, "base_evaluation", lambda *a: None)
    monkeypatch.setattr(comparison, "execute_run", interrupted_run)
    out = tmp_path / "cmp"
    argv = ["--clip-methods", "band", "clip", "--model", tiny_model_dir, "--output-dir", str(out)]
    assert compare.main(argv) == status
    assert trained == ["band-seed0"]
    assert not any((out / name).exists() for name in ("table.md", "table.json", "statistics.json"))
    assert "not finished: band-seed0, clip-seed0" in capsys.readouterr().err


def test_a_second_compare_on_the_same_folder_is_refused_naming_the_first(tmp_path, tiny_model_dir, capsys,
                                                                          no_model_loading):
    """Issue 17, 2: two compare processes on one folder interleaved (and deleted) each other's metrics."""
    import signal
    import socket

    from test_files import hold_in_child

    out = tmp_path / "cmp"
    pid = hold_in_child(out)
    try:
        argv = ["--clip-methods", "clip", "--model", tiny_model_dir, "--output-dir", str(out)]
        assert compare.main(argv) == 2
        assert f"is in use by PID {pid} on {socket.gethostname()}, started " in capsys.readouterr().err
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
