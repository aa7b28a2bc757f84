"""References to a user's Python objects: ``package.module:attr`` or ``path/to/file.py:attr``.

One resolver for every place that takes such a reference -- a search's ``model``, ``data`` and
``fitness`` (TOML or flags), a search space given as ``module:attr`` -- so that they all accept
the same forms and fail with the same one-line errors.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from .errors import UserError


def import_file(path: Path, prefix: str):
    """Execute a user's ``.py`` file as a fresh module and return it; its exceptions propagate.

    The module is registered in ``sys.modules`` under a name unique to the path, so that the
    functions it defines can be found again by name (e.g. when a worker unpickles a task)."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"{prefix}_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module



_RESOLVED: dict = {}


def resolve_reference(ref: str):
    """``package.module:attr`` or ``path/to/file.py:attr`` -> the object (cached)."""
    if ref in _RESOLVED:
        return _RESOLVED[ref]
    module_part, sep, attr = ref.rpartition(":")
    if not sep or not module_part or not attr:
        raise UserError(f"{ref!r} is not a reference of the form module:function or file.py:function")
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{ref!r}: file {path} not found")
        try:
            module = import_file(path, "_gp_activations_task")
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{ref!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise UserError(f"{ref!r}: cannot import module {module_part!r}: {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UserError(f"{ref!r}: {module_part} has no attribute {attr!r}") from None
    _RESOLVED[ref] = obj
    return obj
