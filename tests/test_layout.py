"""The package layout shows the architecture: cells -> theory -> nets -> experiments -> cli, nothing imports upwards.

Checked statically on every module (an import inside a function counts too), and dynamically for the promise that
the theory never needs torch.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mftrnn"

#: each layer may import from the layers before it (and the top-level private helpers), never from a later one
LAYERS = ["cells", "theory", "nets", "experiments", "cli"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """Absolute names of the mftrnn modules (or packages) imported anywhere in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mftrnn"):
                yield target
                for alias in node.names:  # ``from . import x`` may import the module x
                    yield f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mftrnn"):
                    yield alias.name


def _layer(module: str):
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_layers_exist():
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports(path):
    here = _layer(_module_name(path))
    if here is None:  # the facade (__init__, __main__) and the private helpers (errors, _io, _validate)
        if path.name not in ("__init__.py", "__main__.py"):
            bad = [m for m in _imports(path) if _layer(m) is not None]
            assert not bad, f"{path.name} is below every layer but imports {bad}"
        return
    bad = sorted({m for m in _imports(path) if _layer(m) is not None and _layer(m) > here})
    assert not bad, f"{_module_name(path)} (layer {LAYERS[here]}) imports upwards: {bad}"


def test_theory_and_facade_never_import_torch():
    code = ("import sys, mftrnn, mftrnn.theory.spectrum, mftrnn.theory.critical, mftrnn.theory.phase_diagram, "
            "mftrnn.theory.gated, mftrnn.cells; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_library_never_reads_the_book():
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == "book":
                pytest.fail(f"{path.relative_to(PACKAGE)} builds a path into book/")
