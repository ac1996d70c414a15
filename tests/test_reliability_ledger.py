"""The reliability ledger (tests/conftest.py) reports only what tests that passed recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTS = '''
import pytest

def test_passes(reliability):
    reliability.fault("SIGKILL", "ingest", 2)
    reliability.fault("SIGKILL", "train")
    reliability.bad_input("truncated JPEG", "truncated_image", 3)
    reliability.bad_input("truncated JPEG", "kept (cut after its end marker)")
    reliability.check("pickle refused")
    reliability.rows(10, 10)

def test_fails(reliability):
    reliability.fault("SIGKILL", "ingest", 5)
    reliability.rows(7, 0)
    assert False

def test_fails_in_teardown(reliability, broken_teardown):
    reliability.check("pickle refused", 9)

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown")

def test_without_the_ledger():  # not marked reliability: -m reliability deselects it
    pass
'''


def test_the_report_counts_the_records_of_passing_tests_only(tmp_path):
    (tmp_path / "test_sample.py").write_text(TESTS)
    report = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-m", "reliability",
                           "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path / "test_sample.py"),
                           "--reliability-report", str(report)],
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # test_fails_in_teardown's call passed, its teardown errored: its records are dropped too
    assert "1 failed, 2 passed, 1 deselected, 1 error" in proc.stdout, proc.stdout
    text = report.read_text()
    assert text.startswith("# Reliability ledger\n\nWritten by `make reliability` on ")
    assert ": 1 tests passed and recorded; 2 failed (their records are not counted)." in text
    summary, by_place = text.split("## Summary\n", 1)[1].split("## By place and test\n")
    # summed by kind: over the places of a fault, over the outcomes of a bad input
    assert "| SIGKILL | 3 |" in summary
    assert "| truncated JPEG | kept (cut after its end marker), truncated_image | 4 |" in summary
    assert "Bad inputs: 4 tried, of 1 kinds" in summary and "| pickle refused | 1 |" in summary
    assert "Rows read by the runs under faults and bad input: 10; rows lost: 0." in summary
    text = by_place
    assert "| SIGKILL | ingest | 2 | `" in text and "| SIGKILL | train | 1 | `" in text
    assert "| truncated JPEG | truncated_image | 3 | `" in text
    assert "| pickle refused | 1 | `" in text
