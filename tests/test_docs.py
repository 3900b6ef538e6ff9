"""The docs' numbers come from the results files: `scripts/render_docs.py` renders them into
docs/generated/ when the site builds, the pages include them, and no page copies one by hand."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULT_FOLDERS = {"generated", "study", "study-rerun", "compare-fast"}
"""Folders under docs/ that hold rendered or measured files, not hand-written pages."""


def load_renderer():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts" / "render_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


render_docs = load_renderer()


def hand_written_pages() -> dict[Path, str]:
    """The Markdown people write: the pages under docs/ and README.md (the home page). The changelog is
    history and may quote the numbers of its day."""
    pages = [page for page in DOCS.rglob("*.md") if not RESULT_FOLDERS & set(page.relative_to(DOCS).parts)]
    return {page: page.read_text() for page in [*pages, ROOT / "README.md"] if page.name != "changelog.md"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("generated")
    paths = render_docs.render_all(out)
    return {path.name: path.read_text() if path.suffix == ".md" else path.read_bytes().hex() for path in paths}


def test_every_artifact_renders_from_the_committed_files(rendered):
    assert set(rendered) == set(render_docs.ARTIFACTS)
    assert all(text.strip() for text in rendered.values())
    assert all(bytes.fromhex(text)[:8] == b"\x89PNG\r\n\x1a\n" for name, text in rendered.items() if name.endswith(".png"))


def test_every_artifact_is_included_by_a_page():
    pages = "\n".join(hand_written_pages().values())
    for name in render_docs.ARTIFACTS:
        assert f"generated/{name}" in pages, f"no page includes docs/generated/{name}"


def test_pages_include_only_registered_artifacts():
    for page, text in hand_written_pages().items():
        for name in re.findall(r"generated/([\w.-]+)", text):
            assert name in render_docs.ARTIFACTS, f"{page.name} includes generated/{name}, which nothing renders"


RENDERED_NUMBER = re.compile(r"\d+\.\d+x|\d+\.\d+ ms|\d+\.\d+ min|\d+\.\d+%|\d\.\d+e-\d+")
"""A measured figure as the artifacts print it: a ratio, a time, a duration, a share, an error."""


def test_no_page_repeats_a_rendered_number_by_hand(rendered):
    targets = set(RENDERED_NUMBER.findall(" ".join(render_docs.TARGETS.values())))
    numbers = {number for name, text in rendered.items() if name.endswith(".md")
               for number in RENDERED_NUMBER.findall(text)} - targets
    assert len(numbers) > 20  # the pattern does find the artifacts' figures
    for page, text in hand_written_pages().items():
        copied = sorted(number for number in numbers if re.search(rf"(?<![\d.]){re.escape(number)}", text))
        assert not copied, f"{page.relative_to(ROOT)} writes by hand {copied}: include the rendered artifact"


SUPERSEDED = ("143x faster", "1.061x", "11.87 ms", "11.18 ms", "0.70x", "1.04x", "1.08x")
"""Figures of earlier benchmark runs that the pages once quoted by hand."""


def test_no_page_quotes_a_superseded_benchmark_figure():
    for page, text in hand_written_pages().items():
        assert not [figure for figure in SUPERSEDED if figure in text], page.relative_to(ROOT)


def copy_results(root: Path) -> Path:
    """A repository root holding a copy of the results files (benchmarks, study, fast demo); returns the
    benchmark results' folder, to edit."""
    shutil.copytree(ROOT / "benchmarks" / "results", root / "benchmarks" / "results")
    for folder in render_docs.RESULT_FOLDERS[1:]:
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("runs", "*.png", ".bandpo.lock"))
    return root / "benchmarks" / "results"


def test_artifacts_follow_their_files(tmp_path):
    results = copy_results(tmp_path)
    edits = {
        "cpu/loss_overhead.txt": (r"\(medians\): [\d.]+x", "(medians): 9.876x"),
        "cpu/band_speed.txt": (r"(kl \(native\)(?:\s+[\d.]+){3}\s+)[\d.]+", r"\g<1>777.7"),
        "cpu/train_overhead.txt": (r"= [\d.]+% of a step", "= 0.4321% of a step"),
        "cpu/band_accuracy.txt": (r"3\.65e-16", "9.99e-15"),
    }
    for name, (pattern, replacement) in edits.items():
        path = results / name
        text, count = re.subn(pattern, replacement, path.read_text())
        assert count == 1, name
        path.write_text(text)
    summary = json.loads((results / "cpu" / "default_run_summary.json").read_text())
    summary["accuracy_after"] = 0.125
    (results / "cpu" / "default_run_summary.json").write_text(json.dumps(summary))

    matrix = json.loads((results / "cpu" / "trl-matrix.json").read_text())
    matrix["runs"][0].update(verdict="FAIL", pytest="101 passed, 1 failed in 30.00s")
    (results / "cpu" / "trl-matrix.json").write_text(json.dumps(matrix))
    suite = json.loads((results / "cpu" / "test-suite.json").read_text())
    suite["full"]["seconds"] = 1234
    suite["full"]["slowest"][0]["seconds"] = 98.7
    (results / "cpu" / "test-suite.json").write_text(json.dumps(suite))

    render = {name: function(tmp_path) for name, function in render_docs.ARTIFACTS.items()}
    assert f"| {matrix['runs'][0]['trl']} | fail: 101 passed, 1 failed in 30.00s" in render["trl-matrix.md"]
    assert "| 20.6 min |" in render["test-suite.md"] and "| 98.7 s |" in render["test-suite.md"]
    assert "**9.876x**" in render["loss-overhead.md"] and "9.876x (CPU)" in render["benchmarks-summary.md"]
    assert "777.7x faster" in render["operator-speed.md"] and "native kl 777.7x" in render["benchmarks-summary.md"]
    assert "**0.4321%**" in render["train-overhead.md"] and "| 0.4321% |" in render["benchmarks-summary.md"]
    assert "1e-14 for float64" in render["operator-accuracy.md"]
    assert "-> 12.5%" in render["default-run.md"]


def test_render_all_rewrites_only_changes_and_removes_strays(tmp_path):
    paths = render_docs.render_all(tmp_path)
    stamps = {path: path.stat().st_mtime_ns for path in paths}
    stray = tmp_path / "renamed-artifact.md"
    stray.write_text("old")
    assert render_docs.render_all(tmp_path) == paths
    assert not stray.exists()
    assert {path: path.stat().st_mtime_ns for path in paths} == stamps


def test_an_artifact_name_is_registered_once():
    name = next(iter(render_docs.ARTIFACTS))
    with pytest.raises(ValueError, match=name):
        render_docs.artifact(name)


def test_band_speed_reader_skips_warnings_and_refuses_a_file_without_rows(tmp_path):
    path = tmp_path / "band_speed.txt"
    path.write_text(
        "# device=cuda\n"
        "        N method                   ms/call   Mtok/s  x exp+clamp  speedup vs bisect  max rel err\n"
        "W1126 20:57:39.775000 970 torch/_dynamo/variables/tensor.py:1379] Graph break\n"
        "   100000 kl bisection (published)    22.425      4.5       954.63                1.0     5.13e-02\n"
        "   100000 kl (fused)                 0.116    862.6         4.94              193.4     4.97e-06\n"
    )
    rows = render_docs.read_band_speed(path)
    assert set(rows) == {(100000, "kl bisection (published)"), (100000, "kl (fused)")}
    assert rows[100000, "kl (fused)"] == render_docs.SpeedRow("0.116", "4.94", "193.4", "4.97e-06")
    path.write_text("# nothing measured\n")
    with pytest.raises(ValueError, match="no benchmark rows"):
        render_docs.read_band_speed(path)


def test_loss_overhead_reader_names_the_file_it_cannot_read(tmp_path):
    path = tmp_path / "loss_overhead.txt"
    path.write_text("  Band(kl)         median    12.86 ms\n")
    with pytest.raises(ValueError, match="loss_overhead.txt"):
        render_docs.read_loss_overhead(path)
