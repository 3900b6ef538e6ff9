"""Comparison statistics: which steps are off-policy, one row per run, mean ± sd, paired t intervals."""

import math

import pytest
from optional_packages import import_if_installed

import_if_installed("scipy")

from bandpo.training import statistics  # noqa: E402


@pytest.mark.parametrize(
    "generate_every, accumulation, off_policy_steps",
    [
        (4, 1, [2, 3, 4, 6, 7, 8]),  # steps_per_generation 4: the first update of each generation has ratio 1
        (2, 1, [2, 4, 6, 8]),
        (1, 1, []),  # one update per generation: never off-policy
        (2, 2, [1, 2, 3, 4, 5, 6, 7, 8]),  # every optimizer step holds the second micro-batch of a generation
        (2, 4, [1, 2, 3, 4, 5, 6, 7, 8]),
        (1, 4, []),
    ],
)
def test_off_policy_steps_follow_the_generation_schedule(generate_every, accumulation, off_policy_steps):
    found = [s for s in range(1, 9) if statistics.is_off_policy(s, generate_every, accumulation)]
    assert found == off_policy_steps


def records_of(clip_rates, low_p_shares, entropies, rewards):
    """Per-step records as BandPOTrainer logs them (reward only on generation steps)."""
    records = []
    for step, (clip, share, entropy, reward) in enumerate(zip(clip_rates, low_p_shares, entropies, rewards, strict=True), start=1):
        record = {"step": step, "clip_ratio/region_mean": clip, "clip_ratio/low_p_high_share": share, "entropy": entropy}
        if reward is not None:
            record["reward"] = reward
        records.append(record)
    return records + [{"step": len(records), "train_loss": 0.1}]  # the end-of-training record has no metrics


def summary_of(method, seed, accuracy_after, pass_after=None, samples=0):
    return {"method": method, "seed": seed, "steps": 8, "accuracy_before": 0.5, "accuracy_after": accuracy_after,
            "eval_samples": samples, "pass_at_k_before": 0.7 if samples else None, "pass_at_k_after": pass_after,
            "mean_at_k_before": 0.4 if samples else None, "mean_at_k_after": 0.5 if samples else None,
            "wall_seconds": 12.34}


def test_run_row_averages_clipping_over_off_policy_steps_and_the_rest_over_the_last_quarter():
    records = records_of(
        clip_rates=[0.0, 0.1, 0.2, 0.3, 0.0, 0.05, 0.05, 0.1],
        low_p_shares=[0.0, 0.5, 0.0, 0.1, 0.0, 0.0, 0.2, 0.0],
        entropies=[2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.0, 0.8],
        rewards=[-0.5, None, None, None, 0.25, None, None, None],
    )
    row = statistics.run_row(summary_of("band", 3, 0.75, pass_after=0.9, samples=8), records, generate_every=4)
    assert row["method"] == "band" and row["seed"] == 3 and row["steps"] == 8
    assert row["clip_rate_off_policy"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.05 + 0.05 + 0.1) / 6)
    assert row["low_p_high_share"] == pytest.approx((0.5 + 0.0 + 0.1 + 0.0 + 0.2 + 0.0) / 6)
    assert row["entropy_last_quarter"] == pytest.approx(0.9)  # steps 7 and 8
    assert row["reward_last_quarter"] == pytest.approx(0.25)  # the last of two reward records
    assert row["pass_at_8_before"] == 0.7 and row["pass_at_8_after"] == 0.9 and row["mean_at_8_after"] == 0.5
    assert row["accuracy_before"] == 0.5 and row["accuracy_after"] == 0.75 and row["wall_seconds"] == 12.3


def test_run_row_without_sampled_evaluation_has_no_pass_at_k():
    records = records_of([0.0, 0.1], [0.0, 0.0], [1.0, 1.0], [0.0, None])
    row = statistics.run_row(summary_of("clip", 0, 0.5), records, generate_every=2)
    assert not any(key.startswith(("pass_at", "mean_at")) for key in row)
    assert statistics.compared_fields(0) == ("accuracy_after", "entropy_last_quarter", "reward_last_quarter",
                                             "clip_rate_off_policy", "low_p_high_share", *statistics.MECHANISM_FIELDS)
    assert "pass_at_8_after" in statistics.compared_fields(8)


def test_method_summary_is_mean_and_sample_sd_over_seeds():
    rows = [{"method": "band", "seed": s, "accuracy_after": a} for s, a in [(0, 0.5), (1, 0.7), (2, 0.9)]]
    rows.append({"method": "clip", "seed": 0, "accuracy_after": 0.4})
    summary = statistics.method_summary(rows, ("accuracy_after",))
    mean, sd, n = summary["band"]["accuracy_after"]
    assert (mean, n) == (pytest.approx(0.7), 3) and sd == pytest.approx(0.2)
    assert summary["clip"]["accuracy_after"] == (0.4, 0.0, 1)


def test_paired_differences_pair_by_seed_with_a_student_t_interval():
    rows = [{"method": "band", "seed": s, "x": v} for s, v in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 9.0)]]
    rows += [{"method": "clip", "seed": s, "x": v} for s, v in [(2, 1.0), (1, 1.0), (0, 0.0)]]
    diff = statistics.paired_differences(rows, "x", "band", "clip")
    assert diff["seeds"] == [0, 1, 2] and diff["per_seed"] == [1.0, 1.0, 3.0]  # seed 5 has no partner
    half = 4.302652729911275 * math.sqrt(4 / 3) / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert diff["mean"] == pytest.approx(5 / 3)
    assert diff["ci95"] == pytest.approx([5 / 3 - half, 5 / 3 + half])
    assert statistics.paired_differences(rows, "x", "band", "dcpo") is None


def test_a_single_pair_has_no_interval():
    mean, low, high = statistics.t_interval([0.25])
    assert mean == 0.25 and math.isnan(low) and math.isnan(high)


def test_tables_show_every_run_and_every_method():
    rows = [statistics.run_row(summary_of(m, s, 0.5 + 0.1 * s, 0.8, samples=8), records_of([0, 0.1], [0, 0.2], [1, 1], [0, None]), 2)
            for m in ("band", "clip") for s in (0, 1)]
    runs = statistics.format_runs_table(rows, 8)
    assert runs.count("\n| band | ") == 2 and "pass_at_8_after" in runs.splitlines()[0]
    fields = statistics.compared_fields(8)
    methods = statistics.format_method_table(statistics.method_summary(rows, fields), fields)
    assert "| band | 0.550 ± 0.071 (n=2) |" in methods
    diff = statistics.paired_differences(rows, "accuracy_after", "band", "clip")
    assert "| band − clip | accuracy_after | s0: +0.000, s1: +0.000 | +0.000 |" in statistics.format_differences_table([diff])


def test_run_row_averages_the_mechanism_metrics_over_off_policy_steps():
    """ppo_kl, each side's clip rate and the low-p log-ratios: means over the off-policy steps (2, 3, 4)."""
    records = records_of([0.0, 0.1, 0.2, 0.3], [0.0] * 4, [1.0] * 4, [0.0, None, None, None])
    for step, record in enumerate(records[:4], start=1):
        record.update({"policy/ppo_kl": 0.01 * step, "clip_ratio/low_mean": 0.1 * step,
                       "clip_ratio/high_mean": 0.2 * step, "policy/low_p_pos_log_ratio": 0.3 * step,
                       "policy/low_p_neg_log_ratio": -0.4 * step})
    row = statistics.run_row(summary_of("band", 0, 0.5), records, generate_every=4)
    mean_step = (2 + 3 + 4) / 3  # step 1 has ratio 1 and is left out
    assert row["ppo_kl_off_policy"] == pytest.approx(0.01 * mean_step)
    assert row["clip_low_rate_off_policy"] == pytest.approx(0.1 * mean_step)
    assert row["clip_high_rate_off_policy"] == pytest.approx(0.2 * mean_step)
    assert row["low_p_pos_log_ratio"] == pytest.approx(0.3 * mean_step)
    assert row["low_p_neg_log_ratio"] == pytest.approx(-0.4 * mean_step)


def test_a_run_recorded_before_a_metric_existed_gets_none_for_it():
    records = records_of([0.0, 0.1], [0.0, 0.0], [1.0, 1.0], [0.0, None])
    row = statistics.run_row(summary_of("clip", 0, 0.5), records, generate_every=2)
    assert row["low_p_pos_log_ratio"] is None and row["ppo_kl_off_policy"] is None
    assert row["clip_rate_off_policy"] == pytest.approx(0.1)


def test_summary_columns_show_mean_and_sd_in_display_units_and_flag_fewer_seeds():
    per_method = {"band": {"accuracy_after": {"mean": 0.767, "sd": 0.037, "n": 5},
                           "entropy_last_quarter": {"mean": 0.978, "sd": 0.404, "n": 5}},
                  "band-upper": {"accuracy_after": {"mean": 0.75, "sd": 0.01, "n": 2}}}
    table = statistics.format_summary_columns(per_method, ["band", "band-upper"],
                                              ["accuracy_after", "entropy_last_quarter"]).splitlines()
    assert table[0] == "| method | greedy accuracy (%) | entropy, last quarter (nats) |"
    assert table[2] == "| band | 76.7 ± 3.7 | 0.98 ± 0.40 |"
    assert table[3] == "| band-upper | 75.0 ± 1.0 (n=2) | – |"


def test_paired_columns_show_the_mean_and_interval_per_pair_with_its_seed_count():
    differences = [{"method": "band-upper", "baseline": "clip-higher", "field": "accuracy_after", "seeds": [0, 1, 2],
                    "per_seed": [0.01, 0.02, 0.03], "mean": 0.02, "ci95": [-0.005, 0.045]},
                   {"method": "band", "baseline": "band-upper", "field": "accuracy_after", "seeds": [0],
                    "per_seed": [0.1], "mean": 0.1, "ci95": [math.nan, math.nan]}]
    table = statistics.format_paired_columns(differences, [("band-upper", "clip-higher"), ("band", "band-upper"),
                                                           ("band-lower", "clip-higher")], ["accuracy_after"])
    assert table.splitlines()[2:] == ["| band-upper − clip-higher (3) | +2.0 [-0.5, +4.5] |",
                                      "| band − band-upper (1) | +10.0 |",
                                      "| band-lower − clip-higher (0) | – |"]
