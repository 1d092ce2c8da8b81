"""The package's layering: the orchestrator (``pipeline.py``) is imported by the ``pqattack`` command only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pqattack"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved against its package)."""
    package = ".".join(("pqattack", *path.relative_to(PACKAGE).parent.parts))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def test_no_module_imports_the_orchestrator() -> None:
    importers = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
                 if "pqattack.pipeline" in imported_modules(p)]
    assert importers == ["__main__.py"]


def test_the_stages_and_the_layers_before_the_report_do_not_import_it() -> None:
    """Data flows from data, models, quant, attacks and metrics through the stages into the report; the naming of
    rows they share lives in ``pqattack.labels``, so nothing upstream imports ``pqattack.report``."""
    upstream = ("data", "models", "quant", "attacks", "metrics", "stages", "training", "defense")
    importers = [str(p.relative_to(PACKAGE)) for sub in upstream for p in sorted((PACKAGE / sub).rglob("*.py"))
                 if any(m == "pqattack.report" or m.startswith("pqattack.report.") for m in imported_modules(p))]
    assert importers == []
