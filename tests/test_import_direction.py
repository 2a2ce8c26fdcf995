"""Dependencies point one way: labkit never imports drivers or simulator, by any means."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LABKIT = Path(__file__).resolve().parents[1] / "labkit"
FORBIDDEN = ("drivers", "simulator")
IMPORTERS = {"import_module", "__import__", "find_spec", "run_module", "load_module"}


def _forbidden(name: str) -> bool:
    return name.split(".")[0] in FORBIDDEN


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call):
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if called in IMPORTERS:
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        found += [f"{path.relative_to(LABKIT.parent)}:{node.lineno} imports {n}" for n in names if _forbidden(n)]
    return found


def test_labkit_source_names_neither_drivers_nor_simulator():
    bad = [v for p in sorted(LABKIT.rglob("*.py")) for v in _violations(p)]
    assert bad == []


def test_the_scan_catches_every_form(tmp_path):
    src = tmp_path / "labkit" / "x.py"
    src.parent.mkdir()
    src.write_text("import simulator\nfrom drivers.board import TestBoard\nimport importlib\n"
                   "importlib.import_module('simulator.bench')\n__import__('drivers')\n"
                   "from labkit.units import si\n")
    global LABKIT
    saved, LABKIT = LABKIT, src.parent
    try:
        assert len(_violations(src)) == 4
    finally:
        LABKIT = saved


def test_importing_all_of_labkit_loads_neither():
    code = ("import pkgutil, importlib, sys, labkit\n"
            "for m in pkgutil.walk_packages(labkit.__path__, 'labkit.'):\n"
            "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            "from labkit.cli import build_parser\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('drivers', 'simulator'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
