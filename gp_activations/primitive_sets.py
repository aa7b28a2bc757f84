"""Search spaces: DEAP primitive sets built from the operator registry, and their loader.

A search space is written as a small Python file (see ``primitives/*.py`` for the built-in
ones)::

    import torch, sympy
    from gp_activations import SearchSpace

    space = SearchSpace("my_space", "sigmoidal units and a log")
    space.use("add", "mul", "max", "sigmoid", "tanh", "relu")   # built-in operators by name
    space.constants("one")                                       # x is always a terminal

    @space.unary(sympy=lambda x: sympy.log(1 + x**2))
    def log1psq(x):
        "log(1 + x²), finite for every finite x below 1.8e19"
        return torch.log1p(x * x)

:func:`load_primitive_set` turns a built-in name, a path to such a file, or ``module:attr`` into
an :class:`ActivationPrimitiveSet` -- a real ``deap.gp.PrimitiveSet`` whose one argument is
``x`` -- that DEAP's generators and mutators use directly.  Worker processes rebuild the set
from its ``spec`` string, so nothing but text crosses process boundaries.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import traceback
from pathlib import Path
from typing import Callable, Iterable, Optional

import sympy
from deap import gp

from . import operators as ops
from .errors import UserError
from .operators import Operator
from .references import import_file, resolve_reference

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "primitives"


def _builtin_dir() -> Path:
    # Installed (non-editable) copies map `primitives/` to the subpackage gp_activations.primitives.
    try:
        import gp_activations.primitives as pkg

        return Path(pkg.__file__).resolve().parent
    except ImportError:  # pragma: no cover - broken install
        return BUILTIN_DIR


def builtin_names() -> list[str]:
    """Names of the built-in search spaces (the files in ``primitives/``)."""
    return sorted(p.stem for p in _builtin_dir().glob("*.py") if not p.stem.startswith("_"))


class ActivationPrimitiveSet(gp.PrimitiveSet):
    """A DEAP primitive set whose argument is ``x`` and whose primitives are :class:`Operator` s."""

    def __init__(self, name: str, operators: Iterable[Operator], constants: dict, spec: str,
                 description: str = ""):
        super().__init__(name, 1)
        self.renameArguments(ARG0="x")
        self.spec = spec
        self.description = description
        self.operators: dict[str, Operator] = {}
        self.constants: dict[str, float] = dict(constants)
        for op in operators:
            self.operators[op.name] = op
            self.addPrimitive(op.function, op.arity, name=op.name)
        for cname, value in self.constants.items():
            self.addTerminal(float(value), name=cname)

    @property
    def unary(self) -> list[str]:
        return [n for n, o in self.operators.items() if o.arity == 1]

    @property
    def binary(self) -> list[str]:
        return [n for n, o in self.operators.items() if o.arity == 2]

    @property
    def terminal_names(self) -> list[str]:
        return ["x", *self.constants]

    def __repr__(self):
        return (f"ActivationPrimitiveSet({self.name!r}, {len(self.unary)} unary, "
                f"{len(self.binary)} binary, terminals={self.terminal_names})")


class SearchSpace:
    """What a primitives file declares: a name, operators and constant terminals."""

    def __init__(self, name: str, description: str = ""):
        self.name = name
        self.description = description
        self._operators: dict[str, Operator] = {}
        self._constants: dict[str, float] = {}

    # -- declaring ---------------------------------------------------------------------------
    def use(self, *names: str) -> "SearchSpace":
        """Add built-in operators from the registry by name."""
        for name in names:
            self.add(ops.get(name))
        return self

    def add(self, op: Operator) -> Operator:
        """Add an :class:`Operator` (built-in or one you constructed with a torch template)."""
        if op.name in self._operators or op.name in self._constants or op.name == "x":
            raise UserError(f"search space {self.name!r}: name {op.name!r} is defined twice")
        self._operators[op.name] = op
        return op

    def constants(self, *names: str, **values: float) -> "SearchSpace":
        """Constant terminals: built-in names (``zero``, ``one``) or ``name=value`` pairs."""
        for name in names:
            if name not in ops.CONSTANTS:
                raise UserError(f"unknown constant {name!r}; built-in constants: "
                                f"{', '.join(ops.CONSTANTS)} (or pass name=value)")
            values.setdefault(name, ops.CONSTANTS[name])
        for name, value in values.items():
            if name in self._operators or name == "x":
                raise UserError(f"search space {self.name!r}: name {name!r} is defined twice")
            if not math.isfinite(float(value)):
                raise UserError(f"search space {self.name!r}: constant {name!r} must be finite, "
                                f"got {value!r}")
            self._constants[name] = float(value)
        return self

    def operator(self, fn: Optional[Callable] = None, *, arity: Optional[int] = None,
                 name: Optional[str] = None, sympy: Optional[Callable] = None,
                 bound: Optional[Callable] = None, doc: Optional[str] = None,
                 cost: float = 10.0):
        """Decorator: a new operator from a plain Python function of torch tensors.

        ``sympy`` maps sympy expressions to the operator's mathematical form (used for LaTeX and
        numeric checks); without it the operator prints as ``\\operatorname{name}(x)``.  ``bound``
        (largest |output| given largest |input|) is optional; ``cost`` is its forward time in
        ReLU units (see ``operators.COSTS``), used to reject trees too slow to train.  The function must return finite
        values and gradients for finite inputs -- candidates that do not are rejected by the
        search before any training.  On torch export its source is embedded, so it should only
        use ``torch``.
        """

        def wrap(f):
            op_name = name or f.__name__
            if _RESERVED_NAME.fullmatch(op_name):
                raise UserError(f"search space {self.name!r}: operator name {op_name!r} is reserved "
                                f"by the generated code; choose another, e.g. "
                                f"@space.unary(name='my_{op_name}')")
            n = arity if arity is not None else len(inspect.signature(f).parameters)
            operands = ", ".join("{%d}" % i for i in range(n))
            sym = sympy if sympy is not None else _undefined_function(op_name)
            self.add(Operator(op_name, n, f"{op_name}({operands})", sym,
                              doc or (inspect.getdoc(f) or op_name).splitlines()[0],
                              bound=bound, helpers={op_name: f}, user_defined=True, cost=float(cost)))
            return f

        return wrap(fn) if fn is not None else wrap

    def unary(self, fn=None, **kwargs):
        return self.operator(fn, arity=1, **kwargs)

    def binary(self, fn=None, **kwargs):
        return self.operator(fn, arity=2, **kwargs)

    # -- building ----------------------------------------------------------------------------
    def build(self, spec: str) -> ActivationPrimitiveSet:
        if not self._operators:
            raise UserError(f"search space {self.name!r} has no operators; add some with "
                            f"space.use(...) or @space.unary/@space.binary")
        return ActivationPrimitiveSet(self.name, self._operators.values(), self._constants,
                                      spec, self.description)


#: Names the generated code uses itself (torch, x, the function, its variables v<i> and
#: scalars p<i>/beta<i>): a user operator -- called by its name -- may not take them.
_RESERVED_NAME = re.compile(r"torch|x|activation|(?:v|p|beta|e)\d+")


def _undefined_function(name: str):
    fn = sympy.Function(name)
    return lambda *args: fn(*args)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
_CACHE: dict = {}


def load_primitive_set(spec="pangaea") -> ActivationPrimitiveSet:
    """Load a search space: a built-in name, a path to a ``.py`` file, or ``module:attr``.

    Errors in a user's file are reported as :class:`UserError` naming the file and line.
    """
    if isinstance(spec, ActivationPrimitiveSet):
        return spec
    if isinstance(spec, SearchSpace):
        return spec.build(f"<SearchSpace {spec.name}>")
    if not isinstance(spec, (str, os.PathLike)):
        raise UserError(f"primitives must be a name, a path or module:attr, got {type(spec).__name__}")
    text = os.fspath(spec).strip()
    if not text:
        raise UserError("primitives: empty name; built-in search spaces: " + ", ".join(builtin_names()))
    if text in builtin_names():
        path = _builtin_dir() / f"{text}.py"
        return _load_file(path, spec=text)
    looks_like_path = text.endswith(".py") or os.sep in text or text.startswith(".")
    if looks_like_path:
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"primitives file not found: {text} (give a built-in name -- "
                            f"{', '.join(builtin_names())} -- or a path to a .py file)")
        return _load_file(path, spec=str(path))
    if ":" in text:
        return _load_attr(text)
    raise UserError(f"unknown search space {text!r}; built-in: {', '.join(builtin_names())}; "
                    f"or give a path to a .py file or module:attr")


def _load_file(path: Path, spec: str) -> ActivationPrimitiveSet:
    key = (str(path), path.stat().st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    try:
        module = import_file(path, "_gp_activations_space")
    except SyntaxError as exc:
        raise UserError(f"{path}:{exc.lineno}: syntax error in primitives file: {exc.msg}") from None
    except Exception as exc:  # noqa: BLE001 -- any failure of the user's file is reported
        raise UserError(f"{path}:{_user_line(exc, path)}: error in primitives file: "
                        f"{_message(exc)}") from None
    spaces = [v for v in vars(module).values() if isinstance(v, SearchSpace)]
    if len(spaces) != 1:
        found = "no SearchSpace" if not spaces else f"{len(spaces)} SearchSpace objects"
        raise UserError(f"{path}: a primitives file must define exactly one SearchSpace "
                        f"(found {found}); e.g. `space = SearchSpace('name')`")
    try:
        pset = spaces[0].build(spec)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    _CACHE[key] = pset
    return pset


def _load_attr(text: str) -> ActivationPrimitiveSet:
    if text in _CACHE:
        return _CACHE[text]
    try:
        obj = resolve_reference(text)
    except UserError as exc:
        raise UserError(f"primitives {exc}") from None
    if callable(obj) and not isinstance(obj, (SearchSpace, gp.PrimitiveSet)):
        obj = obj()
    if isinstance(obj, SearchSpace):
        pset = obj.build(text)
    elif isinstance(obj, ActivationPrimitiveSet):
        pset = obj
        pset.spec = text
    else:
        raise UserError(f"primitives {text!r} is a {type(obj).__name__}; expected a SearchSpace")
    _CACHE[text] = pset
    return pset


def _user_line(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve() == path]
    return str(frames[-1].lineno) if frames else "?"


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    body = text[0] if text else ""
    if isinstance(exc, UserError):
        return body
    return f"{type(exc).__name__}: {body}" if body else type(exc).__name__


def describe(pset: ActivationPrimitiveSet) -> list[dict]:
    """One row per operator and terminal: name, arity, LaTeX, description."""
    rows = [{"name": "x", "arity": 0, "latex": "x", "doc": "the input"}]
    for cname, value in pset.constants.items():
        rows.append({"name": cname, "arity": 0, "latex": sympy.latex(sympy.Float(value) if
                                                                       value != int(value) else sympy.Integer(int(value))),
                     "doc": f"constant {value:g}"})
    for op in pset.operators.values():
        rows.append({"name": op.name, "arity": op.arity, "latex": op.latex(), "doc": op.doc})
    return rows
