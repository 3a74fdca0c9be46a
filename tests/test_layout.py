"""The library's layout rules: nothing happens at import, training is imported only by those
who train, and every function reads in one screen."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nsa_core"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__main__",))


def test_importing_every_module_leaves_the_process_alone():
    """No module calls into libc (malloc settings) or changes torch's global state at import."""
    child = (
        "import ctypes, torch\n"
        "original = ctypes.CDLL\n"
        "def guarded(name, *a, **k):\n"
        "    assert 'libc.so' not in str(name), 'a module reached for libc at import'\n"
        "    return original(name, *a, **k)\n"
        "ctypes.CDLL = guarded\n"
        "threads, state = torch.get_num_threads(), torch.get_rng_state()\n"
        f"for m in {MODULES!r}:\n"
        "    __import__('nsa_core' if m == '__init__' else 'nsa_core.' + m)\n"
        "assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)\n"
    )
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {a.name for a in node.names}
    return names


def test_only_the_trainers_callers_import_the_trainer():
    # the cache trains a missing model; train-all's worker (scale) tells the trainer how to answer signals
    importers = {p.stem for p in PACKAGE.glob("*.py") if "train" in _imports(p)}
    assert importers <= {"cache", "cli", "scale"}, importers


MAX_LINES = 60


def test_no_function_over_60_lines():
    """From its `def` line to its last line, docstring included, no function of nsa_core is
    longer than MAX_LINES."""
    long = []
    for p in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_LINES:
                long.append(f"{p.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
