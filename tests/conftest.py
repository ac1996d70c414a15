"""The reliability ledger: what the fault, bad-input and security tests tried, tallied from the tests that passed.

A test takes the ``reliability`` fixture and records what it did (``reliability.fault("SIGKILL of the run's
process group", stage)``, ``reliability.bad_input("truncated JPEG", "truncated_image")``,
``reliability.check("stats: SQL that reads outside the workdir", refused=52)``, ``reliability.rows(...)``).
``pytest --reliability-report FILE.md`` writes the ledger, counting only the records of tests that passed (a
failed test's records are dropped), so every figure there is one a passing test measured: its summary section
(summed by kind) is what the README's "Reliability" section shows (tests/readme_reliability.py copies it there,
tests/test_readme_reliability.py checks the copy), then every row by place and test. `make reliability` runs
every test that takes the fixture (marked `reliability`, fast and slow), writes docs/reliability.md and copies
its summary into the README.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

LEDGER_KEY = pytest.StashKey["Ledger"]()
PASSED_KEY = pytest.StashKey[list]()
"""on an item: [whether every phase so far passed]"""
LEDGERS_KEY = pytest.StashKey[list]()
"""on the config: (node id, ledger) of each passed test that recorded"""
STARTED_KEY = pytest.StashKey[float]()
"""on the config: when the session started (time.time())"""


@dataclass
class Ledger:
    """One test's records."""

    faults: Counter = field(default_factory=Counter)
    """(kind, where) -> times injected and survived"""
    bad_inputs: Counter = field(default_factory=Counter)
    """(kind, outcome) -> inputs tried"""
    security: Counter = field(default_factory=Counter)
    """check -> attempts refused"""
    rows_in: int = 0
    rows_lost: int = 0

    def fault(self, kind: str, where: str, times: int = 1) -> None:
        self.faults[kind, where] += times

    def bad_input(self, kind: str, outcome: str, count: int = 1) -> None:
        self.bad_inputs[kind, outcome] += count

    def check(self, name: str, refused: int = 1) -> None:
        self.security[name] += refused

    def rows(self, rows_in: int, accounted: int) -> None:
        """Rows a run read, and how many of them it accounted for (kept, filtered or quarantined)."""
        self.rows_in += rows_in
        self.rows_lost += rows_in - accounted


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reliability-report", metavar="FILE", default=None,
                     help="write the reliability tables (markdown) of the tests that passed to FILE")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: records faults, bad inputs or security checks in the reliability ledger")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that takes the ledger is marked `reliability` (`pytest -m reliability` runs the suite of them)."""
    for item in items:
        if "reliability" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Ledger:
    ledger = Ledger()
    request.node.stash[LEDGER_KEY] = ledger
    return ledger


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    ledger = item.stash.get(LEDGER_KEY, None)
    if ledger is None:
        return
    passed = item.stash.setdefault(PASSED_KEY, [True])
    if report.failed or (report.when == "call" and report.skipped):
        passed[0] = False
    if report.when == "teardown" and passed[0]:
        item.config.stash.setdefault(LEDGERS_KEY, []).append((item.nodeid, ledger))


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[STARTED_KEY] = time.time()


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = session.config.getoption("--reliability-report")
    if not target:
        return
    ledgers = session.config.stash.get(LEDGERS_KEY, [])
    minutes = (time.time() - session.config.stash[STARTED_KEY]) / 60
    Path(target).write_text(render(ledgers, date.today().isoformat(), minutes, session.testsfailed))


SUMMARY = "## Summary"
"""The heading of the report's summary section: the README's "Reliability" figures are a copy of it
(tests/readme_reliability.py)."""


def render(ledgers: list[tuple[str, Ledger]], day: str, minutes: float, failed: int) -> str:
    faults, bad, security, tests = Counter(), Counter(), Counter(), defaultdict(set)
    rows_in = rows_lost = 0
    for nodeid, ledger in ledgers:
        module = nodeid.split("::")[0]
        for key, n in ledger.faults.items():
            faults[key] += n
            tests["fault", key].add(module)
        for key, n in ledger.bad_inputs.items():
            bad[key] += n
            tests["bad", key].add(module)
        for key, n in ledger.security.items():
            security[key] += n
            tests["security", key].add(module)
        rows_in, rows_lost = rows_in + ledger.rows_in, rows_lost + ledger.rows_lost

    def where(kind: str, key) -> str:
        return ", ".join(f"`{m}`" for m in sorted(tests[kind, key]))

    lines = ["# Reliability ledger", "",
             f"Written by `make reliability` on {day} ({minutes:.0f} min): {len(ledgers)} tests passed and "
             f"recorded; {failed} failed (their records are not counted).", "",
             SUMMARY, "", *summary(faults, bad, security, rows_in, rows_lost), "",
             "## By place and test", "",
             "| fault injected | where | survived | tests |", "|---|---|---:|---|"]
    lines += [f"| {k} | {w} | {n} | {where('fault', (k, w))} |" for (k, w), n in sorted(faults.items())]
    lines += ["", "| bad input | outcome | tried | tests |", "|---|---|---:|---|"]
    lines += [f"| {k} | {o} | {n} | {where('bad', (k, o))} |" for (k, o), n in sorted(bad.items())]
    lines += ["", "| security check | refused | tests |", "|---|---:|---|"]
    lines += [f"| {k} | {n} | {where('security', k)} |" for k, n in sorted(security.items())]
    return "\n".join(lines) + "\n"


def summary(faults: Counter, bad: Counter, security: Counter, rows_in: int, rows_lost: int) -> list[str]:
    """The figures summed by kind: faults over every place, bad inputs over every outcome."""
    by_kind, tried, outcomes = Counter(), Counter(), defaultdict(set)
    for (kind, _), n in faults.items():
        by_kind[kind] += n
    for (kind, outcome), n in bad.items():
        tried[kind] += n
        outcomes[kind].add(outcome)
    lines = ["| fault injected | survived |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in sorted(by_kind.items())]
    lines += ["", f"Bad inputs: {sum(tried.values())} tried, of {len(tried)} kinds, each quarantined with its "
              "reason or kept as the rule says:", "", "| bad input | outcome | tried |", "|---|---|---:|"]
    lines += [f"| {k} | {', '.join(sorted(outcomes[k]))} | {n} |" for k, n in sorted(tried.items())]
    lines += ["", "| security check | refused |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in sorted(security.items())]
    lines += ["", f"Rows read by the runs under faults and bad input: {rows_in}; rows lost: {rows_lost}."]
    return lines
