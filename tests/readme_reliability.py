"""Copy the last reliability report's summary (docs/reliability.md) into the README's "Reliability" section.

`make reliability` runs this after the tests; tests/test_readme_reliability.py checks that the README holds the
copy. The copy goes between the BEGIN and END comment lines of the README, replacing what was there.

    python tests/readme_reliability.py [REPORT] [README]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import SUMMARY  # noqa: E402  (the report's summary heading)

BEGIN = "<!-- reliability summary: copied from docs/reliability.md by `make reliability` -->"
END = "<!-- end of the reliability summary -->"


def summary_block(report: str) -> str:
    """The report's "Written by" line and its summary section."""
    written = next(line for line in report.splitlines() if line.startswith("Written by `make reliability`"))
    summary = report.split(f"\n{SUMMARY}\n\n", 1)[1].split("\n\n## ", 1)[0]
    return f"{written}\n\n{summary}"


def readme_block(readme: str) -> str:
    """What the README holds between the markers."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"the README lacks the markers {BEGIN!r} and {END!r}")
    return readme.split(BEGIN + "\n", 1)[1].split("\n" + END, 1)[0]


def copy(report: Path, readme: Path) -> None:
    text = readme.read_text()
    old = readme_block(text)
    readme.write_text(text.replace(f"{BEGIN}\n{old}\n{END}", f"{BEGIN}\n{summary_block(report.read_text())}\n{END}"))


if __name__ == "__main__":
    args = sys.argv[1:]
    copy(Path(args[0]) if args else ROOT / "docs" / "reliability.md",
         Path(args[1]) if len(args) > 1 else ROOT / "README.md")
