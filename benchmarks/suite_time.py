"""Time of the README's test command, as CI runs it: a fresh clone of the committed HEAD, then
``bash scripts/test.sh`` (set-up, suite, lint, docs, notebook, TRL matrix, integrations), then the
fast tier (``scripts/test.sh --fast``) in the same clone.

    python benchmarks/suite_time.py [--output benchmarks/results/cpu/test-suite.json] [--keep]

Records each phase's time (the ``phase NAME: N s`` lines test.sh prints), the tests' outcomes and
the slowest tests (from pytest's JUnit XML), the machine's core count and its load average before the
run: the targets (full command <= 15 min, fast tier <= 2 min, no test over 60 s) hold on an idle
2-core machine, so a run beside other work says so in its file. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASE_LINE = re.compile(r"^phase ([\w-]+): (\d+) s$", re.MULTILINE)
SLOWEST = 10


def run_logged(command: list[str], cwd: Path, log: Path) -> tuple[int, float, str]:
    """Runs ``command`` with its output teed to ``log``; returns (exit status, wall seconds, output)."""
    start = time.monotonic()
    with log.open("w") as file:
        # a cold torch.compile cache, as on CI's fresh machine
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cwd.parent / f"{cwd.name}-inductor-cache")}
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        assert process.stdout is not None
        for line in process.stdout:
            file.write(line)
            sys.stdout.write(line)
        status = process.wait()
    return status, time.monotonic() - start, log.read_text()


def junit_tests(path: Path) -> list[dict]:
    """Every test case of a JUnit XML file: node id, seconds, outcome."""
    cases = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        node = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        cases.append({"test": node, "seconds": round(float(case.get("time", 0.0)), 2), "outcome": outcome})
    return cases


def tier(cases: list[dict]) -> dict:
    """Outcome counts (in all and per module), the slowest tests and those over 60 s."""
    counts: dict[str, int] = {}
    modules: dict[str, dict[str, int]] = {}
    for case in cases:
        counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
        module = modules.setdefault(case["test"].split("::")[0], {"passed": 0, "total": 0})
        module["total"] += 1
        module["passed"] += case["outcome"] == "passed"
    slowest = sorted(cases, key=lambda case: -case["seconds"])
    return {
        "outcomes": counts,
        "outcomes_by_module": [{"module": name, **module} for name, module in sorted(modules.items())],
        "slowest": [{"test": case["test"], "seconds": case["seconds"]} for case in slowest[:SLOWEST]],
        "over_60_s": [case["test"] for case in slowest if case["seconds"] > 60],
    }


def measure(command: list[str], clone: Path, name: str) -> dict:
    """One command in the clone: its exit status, wall time, phase times and, where pytest wrote its
    JUnit XML (``<name>.xml``), the tier's outcomes and slowest tests."""
    junit = clone / f"{name}.xml"
    status, seconds, log = run_logged([*command, f"--junitxml={junit}"], clone, clone / f"{name}.log")
    return {
        "command": " ".join(command),
        "exit_status": status,
        "seconds": round(seconds),
        "phases": {phase: int(phase_seconds) for phase, phase_seconds in PHASE_LINE.findall(log)},
        **(tier(junit_tests(junit)) if junit.exists() else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "cpu" / "test-suite.json")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    load_before = os.getloadavg()
    clone = Path(tempfile.mkdtemp(prefix="bandpo-ci-"))
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    try:
        full = measure(["bash", "scripts/test.sh"], clone, "full")
        fast = measure(["bash", "scripts/test.sh", "--fast"], clone, "fast")
        record = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit,
            "cpus": os.cpu_count(),
            "load_average_before": [round(load, 2) for load in load_before],
            "full": full,
            "fast": fast,
        }
    finally:
        if args.keep:
            print(f"clone kept: {clone}")
        else:
            shutil.rmtree(clone, ignore_errors=True)
            shutil.rmtree(clone.parent / f"{clone.name}-inductor-cache", ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({key: record[key]["phases"] for key in ("full", "fast")}, indent=2))
    print(f"wrote {args.output}")
    return 0 if full["exit_status"] == fast["exit_status"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
