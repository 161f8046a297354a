"""Every command-line entry point answers ``--help`` (exit 0) and names each option's default at most once;
``imedsam-eval`` names its defaults; a ``--quick`` benchmark never writes over ``benchmarks/results``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("imedsam-train", "imedsam-eval", "imedsam-demo")
MODULES = ("benchmarks.speed", "benchmarks.accuracy")


def _help(args: list[str]) -> str:
    proc = subprocess.run([*args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, COLUMNS="100"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]
    return proc.stdout


def options(text: str) -> dict[str, str]:
    """Option name -> its help entry, joined onto one line."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"  (-{1,2}[\w-]+)", line)
        if m:
            current = m.group(1)
            out[current] = line.strip()
        elif current and line.startswith("    "):
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def defaults_named(entry: str) -> int:
    return len(re.findall(r"\bdefault[: ]", entry, re.IGNORECASE))


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_help(name):
    exe = Path(sys.executable).with_name(name)
    assert exe.exists(), f"{exe} is missing: pip install -e '.[test]'"
    entries = options(_help([str(exe)]))
    assert "-h" in entries and len(entries) > 3
    twice = {opt: e for opt, e in entries.items() if defaults_named(e) > 1}
    assert not twice, twice


@pytest.mark.parametrize("module", MODULES)
def test_benchmark_help(module):
    entries = options(_help([sys.executable, "-m", module]))
    assert "--quick" in entries and "--json" in entries
    twice = {opt: e for opt, e in entries.items() if defaults_named(e) > 1}
    assert not twice, twice


def test_help_names_the_defaults():
    from src_training.evaluate import build_parser as eval_parser
    from src_training.train import build_parser as train_parser

    ev = options(eval_parser().format_help())
    assert "(default: test)" in ev["--split"] and "(default: 4)" in ev["--batch-size"]
    assert "(default: 2.0)" in ev["--nsd-tolerance"] and "(default: litemedsam)" in ev["--backbone"]
    assert defaults_named(ev["--json"]) == 0  # no default: nothing said
    tr = options(train_parser().format_help())
    assert "(default: 4)" in tr["--batch-size"] and defaults_named(tr["--batch-size"]) == 1
    assert defaults_named(tr["--lora-rank"]) == 1 and defaults_named(tr["--augment"]) == 0
    assert "(default: 0.5 0.3 0.2)" in tr["--point-mix"]


def test_quick_benchmark_results_stay_out_of_the_repository():
    from benchmarks.common import QUICK_RESULTS_DIR, RESULTS_DIR, base_parser

    parser = base_parser("speed", "test")
    assert parser.parse_args([]).json == RESULTS_DIR / "speed.json"
    quick = parser.parse_args(["--quick"]).json
    assert quick == QUICK_RESULTS_DIR / "speed.json" and ROOT not in quick.parents
    assert parser.parse_args(["--quick", "--json", "x.json"]).json == Path("x.json")
