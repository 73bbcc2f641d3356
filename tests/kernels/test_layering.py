"""The layers of the package import downwards only: the layout types need nothing but torch, the kernels
need the layout types and nothing above them."""

import ast
import sys
from pathlib import Path

import vmoba

PACKAGE = Path(vmoba.__file__).parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports, relative imports resolved against the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(parts[: len(parts) - node.level]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import name: each name is a module
                names.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                names.add(module)
    return names


def test_layout_imports_only_torch_and_the_standard_library():
    top = {name.split(".")[0] for name in _imports(PACKAGE / "layout.py")}
    assert top - set(sys.stdlib_module_names) == {"torch"}


def test_kernels_import_the_layout_and_nothing_above_it():
    allowed = {"vmoba.layout", "vmoba._parallel"}
    for path in sorted((PACKAGE / "kernels").glob("*.py")):
        own = {name for name in _imports(path) if name.startswith("vmoba")}
        above = {name for name in own if not name.startswith("vmoba.kernels")} - allowed
        assert not above, f"{path.name} imports {sorted(above)}"
