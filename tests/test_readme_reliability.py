"""The README's "Reliability" figures are a copy of the last `make reliability` report's summary
(docs/reliability.md, written by tests/conftest.py), with the line that says when and how it ran."""

from __future__ import annotations

from pathlib import Path

from tests.readme_reliability import BEGIN, END, copy, readme_block, summary_block

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_shows_the_summary_of_the_last_reliability_report():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Reliability\n", 1)[1].split("\n## ", 1)[0]
    assert BEGIN in section and END in section, "the copy is not in the README's Reliability section"
    assert readme_block(readme) == summary_block((ROOT / "docs" / "reliability.md").read_text()), \
        "the README's reliability figures are not the report's summary: run tests/readme_reliability.py"


def test_copying_replaces_the_old_summary_and_nothing_else(tmp_path):
    report, readme = tmp_path / "reliability.md", tmp_path / "README.md"
    report.write_text("# Reliability ledger\n\nWritten by `make reliability` on 2026-01-02 (3 min): 4 tests passed "
                      "and recorded; 0 failed.\n\n## Summary\n\n| fault injected | survived |\n|---|---:|\n"
                      "| SIGKILL | 5 |\n\n## By place and test\n\n| rows |\n")
    readme.write_text(f"# curaclip\n\n## Reliability\n\nPromises.\n\n{BEGIN}\nold figures\n\nmore old\n{END}\n\n"
                      "## Speed\n")
    copy(report, readme)
    assert readme.read_text() == (
        f"# curaclip\n\n## Reliability\n\nPromises.\n\n{BEGIN}\nWritten by `make reliability` on 2026-01-02 "
        f"(3 min): 4 tests passed and recorded; 0 failed.\n\n| fault injected | survived |\n|---|---:|\n"
        f"| SIGKILL | 5 |\n{END}\n\n## Speed\n")
