"""Lazy attributes of a package (PEP 562): ``import vmoba`` stays fast, and ``vmoba.events`` or ``vmoba.enable``
import their module the first time they are used."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Mapping


def lazy_attributes(package: str, namespace: dict[str, Any], submodules: Iterable[str],
                    exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``submodules`` is that submodule, each key of
    ``exports`` the attribute of that name in the submodule it maps to. A resolved name is stored in the
    package's ``namespace``, so it is looked up once."""
    submodules = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        elif name in exports:
            module = importlib.import_module(f"{package}.{exports[name]}")
            try:
                value = getattr(module, name)
            except AttributeError:
                raise AttributeError(f"module {package!r} has no attribute {name!r} "
                                     f"({package}.{exports[name]} does not define it)") from None
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *submodules, *exports})

    return __getattr__, __dir__
