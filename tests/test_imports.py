"""The direction of imports (STYLE.md): the library folders never import Prefect or Ray."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("curation", "training", "eval")
FORBIDDEN = {"prefect", "ray", "flows", "tasks"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LIBRARY)
def test_library_imports_neither_prefect_nor_ray(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN)
        for path in (ROOT / package).rglob("*.py")
        if imported_modules(path) & FORBIDDEN
    }
    assert offenders == {}


def test_checker_sees_forbidden_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ray.data\nfrom prefect import flow\nfrom . import sibling\n")
    assert imported_modules(bad) & FORBIDDEN == {"ray", "prefect"}


def test_tasks_do_not_import_flows():
    offenders = [p.name for p in (ROOT / "tasks").rglob("*.py") if "flows" in imported_modules(p)]
    assert offenders == []
