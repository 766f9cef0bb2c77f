"""Optional dependencies of the zoo: import them, or find their bundled files, with errors that name the fix."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from opom.errors import UserError

ZOO_PIP = "pip install 'opom[zoo]'"


class MissingExtraError(UserError, ImportError):
    """An optional package (or a file it ships) is missing; the message names the pip command."""


def require(module: str, purpose: str, pip: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{purpose} needs the '{module}' package: {pip}") from err


def package_file(package: str, relative: str, distribution: str, pip: str) -> Path:
    """A file shipped inside an installed package, found WITHOUT importing it (some import heavy modules)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"{relative} comes from the '{distribution}' package, which is not installed: {pip}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.exists():
            return path
    raise MissingExtraError(f"the installed '{distribution}' package has no {relative}: {pip}")
