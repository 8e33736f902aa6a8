"""The layers of DESIGN.md ("who may import whom"), checked on the source with ``ast``.

parsetune/ is the ground floor (storage, errors, records, tasks); parsetune/cli.py alone may
dispatch to the packages above it. prep and eval never import each other; pipelines may import
prep, eval and parsetune; infra imports only parsetune (it shells out to ``parsetune ...``).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("parsetune", "prep", "eval", "pipelines", "infra")

# package -> the project packages it may import (besides itself)
ALLOWED = {
    "parsetune": set(),
    "prep": {"parsetune"},
    "eval": {"parsetune"},
    "pipelines": {"parsetune", "prep", "eval"},
    "infra": {"parsetune"},
}
DISPATCHER = "parsetune/cli.py"  # may import every package's register()


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` for every import of a project package in ``path``, including
    imports inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in PACKAGES]
    return found


def test_every_import_goes_in_an_allowed_direction():
    broken = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative == DISPATCHER:
                continue
            for line, target in imported_packages(path):
                if target != package and target not in allowed:
                    rule = f"{package}/ may import only {', '.join(sorted(allowed)) or 'nothing of prep/eval/pipelines/infra'}"
                    broken.append(f"{relative}:{line} imports {target}: {rule}")
    assert not broken, "import directions broken (DESIGN.md, Layers):\n" + "\n".join(broken)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from eval.viggo_metrics import score_all\n    import prep.readers\n")
    assert imported_packages(module) == [(2, "eval"), (3, "prep")]
