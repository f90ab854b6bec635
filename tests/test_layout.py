"""The product and its simulator read apart: no product module imports the offline engine."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

OFFLINE_PACKAGE = "components.offline"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, absolute names (`from components import offline` gives components.offline)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def product_modules(root: Path = ROOT) -> list[Path]:
    """__main__.py and every module under components/ outside components/offline/."""
    offline_dir = root / "components" / "offline"
    return [root / "__main__.py", *(p for p in sorted((root / "components").rglob("*.py")) if offline_dir not in p.parents)]


def offline_imports(path: Path) -> set[str]:
    return {m for m in imported_modules(path) if m == OFFLINE_PACKAGE or m.startswith(OFFLINE_PACKAGE + ".")}


def test_no_product_module_imports_the_offline_engine() -> None:
    modules = product_modules()
    assert ROOT / "components" / "program.py" in modules and ROOT / "components" / "cluster.py" in modules
    assert not any("offline" in p.parts for p in modules)
    offenders = {str(p.relative_to(ROOT)): sorted(offline_imports(p)) for p in modules if offline_imports(p)}
    assert offenders == {}


def test_the_check_sees_each_import_form(tmp_path: Path) -> None:
    """Each way of importing the engine is caught (the check can fail)."""
    forms = [
        "from components import offline",
        "from components.offline import tls",
        "import components.offline.preview",
        "from components.offline.tls import issue",
    ]
    for i, line in enumerate(forms):
        path = tmp_path / f"m{i}.py"
        path.write_text(f"{line}\n")
        assert offline_imports(path), line
    clean = tmp_path / "clean.py"
    clean.write_text("from components import settings, render\nimport pulumi\n")
    assert offline_imports(clean) == set()
