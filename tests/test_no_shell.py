"""No subprocess gets a shell string built from input: the pipeline's packages never start a shell (`os.system`,
`os.popen`, `shell=True`, `commands`/`pty` spawning) and do not import `subprocess` at all, so no value read
from a pool, a config or a model's answer can become a command line. A new need for a subprocess must pass an
argument list, and this test is where to say so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curation", "training", "eval", "tasks", "flows")
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "execl"), ("os", "execlp"), ("os", "spawnl"),
               ("pty", "spawn")}


def shell_uses(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{filename}:{node.lineno} imports {m}" for m in modules
                      if m.split(".")[0] in {"subprocess", "commands", "pty"}]
        elif isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and (func.value.id, func.attr) in SHELL_CALLS):
                found.append(f"{filename}:{node.lineno} calls {func.value.id}.{func.attr}")
            found += [f"{filename}:{node.lineno} passes shell=True" for k in node.keywords
                      if k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_starts_a_shell(package, reliability):
    modules = sorted((ROOT / package).rglob("*.py"))
    uses = [u for path in modules for u in shell_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert uses == []
    reliability.check("no-shell scan: pipeline modules that start a shell (scanned: none does)",
                      refused=len(modules))


def test_the_check_sees_each_way_to_a_shell(reliability):
    source = ("import subprocess\nimport os\nsubprocess.run(cmd, shell=True)\nos.system(cmd)\nos.popen(cmd)\n"
              "from pty import spawn\nsubprocess.run(['ls'], shell=False)\n")
    planted = ["calls os.popen", "calls os.system", "imports pty", "imports subprocess", "passes shell=True"]
    assert sorted(u.split(" ", 1)[1] for u in shell_uses(source, "x.py")) == planted
    reliability.check("no-shell scan: shell uses planted in a module, each caught", refused=len(planted))
