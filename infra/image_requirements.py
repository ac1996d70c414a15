"""Print the requirements of one image flavour of curaclip, one a line, from pyproject.toml.

    python infra/image_requirements.py cpu   # the dependencies as declared (faiss-cpu)
    python infra/image_requirements.py gpu   # the same with the `gpu` extra in place of faiss-cpu

infra/Dockerfile installs these and then the project itself with --no-deps, so an image holds exactly one faiss
build: installing '.[gpu]' would install faiss-cpu beside faiss-gpu-cu12, both into the same `faiss` package
directory, and uninstalling either afterwards deletes files the other one needs.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

FLAVOURS = ("cpu", "gpu")
CPU_FAISS = "faiss-cpu"


def _name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(flavour: str, pyproject: Path) -> list[str]:
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"])
    if flavour == "gpu":
        deps = [d for d in deps if _name(d) != CPU_FAISS] + list(project["optional-dependencies"]["gpu"])
    return deps


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    pyproject = Path(argv[1]) if len(argv) == 2 else Path("pyproject.toml")
    print("\n".join(requirements(argv[0], pyproject)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
