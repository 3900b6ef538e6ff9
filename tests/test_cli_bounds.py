"""Specification of ``bandpo bounds`` (``bandpo.cli.bounds``): the Band operator's bounds as a table
and as the paper's two figures, with the relax variant and the sided rules on request.

Expected values are SPEC §2.1's reference values, or the rules' own bounds (tested against
mpmath in tests/test_divergences.py and tests/test_rules.py).
"""

from __future__ import annotations

import math

import pytest
from optional_packages import import_if_installed

from bandpo.cli.main import main


def table_rows(output: str) -> dict[tuple[str, float], tuple[float, float]]:
    """(label, p) -> (lower, upper) from the printed table."""
    rows = {}
    for line in output.splitlines()[2:]:
        label, p, lower, upper, _, _ = line.split()
        rows[label, float(p)] = (float(lower), float(upper))
    return rows


def test_table_shows_the_spec_reference_bounds(capsys):
    """SPEC §2.1, kl at delta 0.1: p = 0.08 -> [0.12306, 3.16885], p = 0.5 -> [0.57424, 1.42576]."""
    assert main(["bounds", "--divergence", "kl", "--delta", "0.1", "--p", "0.08", "0.5", "0.9"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["kl", 0.08] == pytest.approx((0.12306, 3.16885), abs=1e-5)
    assert rows["kl", 0.5] == pytest.approx((0.57424, 1.42576), abs=1e-5)
    assert rows["kl", 0.9] == pytest.approx((0.79736, 1.09271), abs=1e-5)


def test_the_probability_change_columns_are_r_minus_one_times_p(capsys):
    main(["bounds", "--divergence", "tv", "--delta", "0.05", "--p", "0.2"])
    line = capsys.readouterr().out.splitlines()[2].split()
    p, lower, upper, down, up = map(float, line[1:])
    assert (down, up) == pytest.approx(((lower - 1) * p, (upper - 1) * p), abs=1e-5)
    assert (down, up) == pytest.approx((-0.05, 0.05), abs=1e-5)  # tv moves the probability by delta


def test_relax_adds_each_band_widened_to_the_fixed_interval(capsys):
    """--relax: rows '<divergence>+relax' with lower = min(band, 1 - eps_low), upper = max(band, 1 + eps_high)."""
    main(["bounds", "--divergence", "kl", "chi2", "--delta", "0.05", "--p", "0.01", "0.9", "--relax"])
    rows = table_rows(capsys.readouterr().out)
    for name in ("kl", "chi2"):
        for p in (0.01, 0.9):
            lower, upper = rows[name, p]
            assert rows[f"{name}+relax", p] == pytest.approx((min(lower, 0.8), max(upper, 1.28)), abs=1e-5)
    assert rows["kl+relax", 0.9] == pytest.approx((0.8, 1.28), abs=1e-5)  # a confident token: the fixed interval
    assert rows["kl+relax", 0.01] == rows["kl", 0.01]  # a rare one: the band, already wider


def test_sided_adds_band_upper_and_band_lower_rows(capsys):
    """--sided: '<divergence>+upper' is (1 - eps_low, band's upper), '<divergence>+lower' (band's lower, 1 + eps_high)."""
    main(["bounds", "--divergence", "kl", "tv", "--delta", "0.05", "--p", "0.01", "0.5", "0.9", "--sided"])
    rows = table_rows(capsys.readouterr().out)
    for name in ("kl", "tv"):
        for p in (0.01, 0.5, 0.9):
            lower, upper = rows[name, p]
            assert rows[f"{name}+upper", p] == pytest.approx((0.8, upper), abs=1e-5)
            assert rows[f"{name}+lower", p] == pytest.approx((lower, 1.28), abs=1e-5)


def test_sided_takes_the_eps_flags_and_combines_with_relax(capsys):
    main(["bounds", "--divergence", "kl", "--p", "0.1", "--sided", "--relax", "--eps-low", "0.1", "--eps-high", "0.5"])
    rows = table_rows(capsys.readouterr().out)
    lower, upper = rows["kl", 0.1]
    assert rows["kl+upper", 0.1] == pytest.approx((0.9, upper), abs=1e-5)
    assert rows["kl+lower", 0.1] == pytest.approx((lower, 1.5), abs=1e-5)
    assert ("kl+relax", 0.1) in rows


def test_relax_takes_the_eps_flags(capsys):
    main(["bounds", "--divergence", "kl", "--p", "0.9", "--relax", "--eps-low", "0.1", "--eps-high", "0.1"])
    rows = table_rows(capsys.readouterr().out)
    band_lower, band_upper = rows["kl", 0.9]
    assert rows["kl+relax", 0.9] == pytest.approx((min(band_lower, 0.9), max(band_upper, 1.1)), abs=1e-5)


def test_upper_max_caps_the_table(capsys):
    main(["bounds", "--divergence", "kl", "--p", "0.0001", "--upper-max", "10"])
    rows = table_rows(capsys.readouterr().out)
    assert rows["kl", 0.0001][1] == 10.0


@pytest.mark.parametrize("relax", [[], ["--relax"], ["--sided"]])
def test_plot_writes_the_figure(tmp_path, capsys, relax):
    import_if_installed("matplotlib")  # the plots extra; the test venv has it (trl extra)
    path = tmp_path / "figures" / "bounds.png"
    assert main(["bounds", "--delta", "0.1", "--plot", str(path), "--log-p", *relax]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure written to {path}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--p", "0"], "--p values must lie in (0, 1]"),
        (["--p", "1.5"], "--p values must lie in (0, 1]"),
        (["--p", "nan"], "--p values must lie in (0, 1]"),
        (["--delta", "0"], "delta"),
        (["--delta", "1e9"], "delta"),
        (["--upper-max", "0.5"], "upper_max"),
        (["--eps-low", "1.0"], "--eps-low"),
        (["--eps-high", "-0.1"], "--eps-high"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(capsys, flags, message):
    assert main(["bounds", *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bandpo bounds: error:") and message in error


def test_every_band_row_is_finite_for_the_default_probabilities(capsys):
    main(["bounds", "--divergence", "kl", "tv", "chi2", "reverse_kl", "hellinger", "--relax"])
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 10 * 11
    assert all(math.isfinite(lower) and math.isfinite(upper) and lower <= 1 <= upper for lower, upper in rows.values())


def test_plot_without_an_extension_writes_and_reports_a_png(tmp_path, capsys):
    """Issue 17, 12: --plot X wrote X.png but reported X."""
    import_if_installed("matplotlib")
    assert main(["bounds", "--p", "0.5", "--plot", str(tmp_path / "X")]) == 0
    assert (tmp_path / "X.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure written to {tmp_path / 'X.png'}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, message",
    [("bounds.txt", "the extension must be one of"), ("a-file/bounds.png", "cannot make the folder")],
    ids=["txt", "folder-is-a-file"],
)
def test_a_plot_path_that_cannot_be_written_exits_2_before_the_table(tmp_path, capsys, name, message):
    """Issue 17, 12: a traceback after the table."""
    import_if_installed("matplotlib")
    (tmp_path / "a-file").write_text("x")
    assert main(["bounds", "--p", "0.5", "--plot", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("bandpo bounds: error: --plot") and message in captured.err


def test_a_plot_into_a_missing_folder_makes_it(tmp_path):
    import_if_installed("matplotlib")
    assert main(["bounds", "--p", "0.5", "--plot", str(tmp_path / "new" / "deeper" / "b.png")]) == 0
    assert (tmp_path / "new" / "deeper" / "b.png").is_file()


def test_a_full_standard_output_is_one_line_and_status_1(capsys, monkeypatch):
    """Issue 17, 12: `bandpo bounds > /dev/full` gave an OSError traceback."""
    import errno
    import io
    import sys

    class FullDevice(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", FullDevice())
    assert main(["bounds", "--p", "0.5"]) == 1
    assert capsys.readouterr().err == "bandpo bounds: error: No space left on device\n"
