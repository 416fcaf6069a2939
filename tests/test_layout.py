"""Imports run one way: cli -> server, bench -> models, metrics -> decoding (README "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {
    "decoding": {"decoding"},
    "metrics": {"metrics", "decoding"},
    "models": {"models", "decoding"},
    "bench": {"bench", "models", "metrics", "decoding"},
    "server": {"server", "models", "metrics", "decoding"},
    "cli": {"cli", "server", "bench", "models", "metrics", "decoding"},
}


def _imported_folders(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n.split(".")[1] for n in names if n.startswith("specserve.") and n.count(".") >= 1}
    return out


def test_imports_run_one_way():
    wrong = []
    for folder, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for other in _imported_folders(path) - allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports specserve.{other}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports():
    """The scan finds what it must refuse (a check that cannot fail checks nothing)."""
    assert _imported_folders(ROOT / "cli" / "main.py") == {"cli"}
    assert "decoding" in _imported_folders(ROOT / "server" / "app.py")
