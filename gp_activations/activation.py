"""The candidate activation: one object that compiles, prints and exports itself.

    >>> act = Activation.from_string("mul(x, sigmoid(x))", primitives="pangaea", params=[3])
    >>> layer = act.module()                 # fresh nn.Module, its own learnable p0
    >>> act.latex()                          # 'x \\sigma\\left(p_{0} x\\right)'
    >>> print(act.torch_source())            # standalone .py, imports only torch

``params`` lists the nodes (prefix-order indices, 0 = root) whose *outgoing edge* carries a
learnable multiplicative scalar -- PANGAEA's parameterisation -- initialised to 1 so that the
parametric function equals the plain one at initialisation.  Operators with their own β
(the swish_search space) always carry those.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import textwrap
from pathlib import Path
from typing import Iterable, Optional

import sympy
import torch
from deap import gp
from torch import nn

from . import __version__, fusion
from .codegen import ParamSlot, Program, generate, leaf_value, param_slots
from .compiled import COMPILED
from .errors import UserError
from .expression import children, is_literal, parse
from .normalization import Normalization
from .operators import REGISTRY
from .primitive_sets import ActivationPrimitiveSet, load_primitive_set

JSON_FORMAT = "gp-activations/activation"


def set_compile_cache(directory: Optional[str]) -> None:
    """Where torch.compile keeps its kernels (TORCHINDUCTOR_CACHE_DIR; default
    ``~/.cache/gp-activations/inductor``), reused across processes and runs.  An unusable
    directory gives a warning and a fresh one (:meth:`compiled.CompileState.use_cache`)."""
    COMPILED.use_cache(directory)


def fused_function_of(act: "Activation"):
    """The shared compiled function of ``act``, where one was made in this process (else None)."""
    return COMPILED.fused_of(act.program)


class ActivationModule(nn.Module):
    """One activation site: the compiled function plus this site's learnable scalars."""

    def __init__(self, activation: "Activation", num_channels: Optional[int] = None,
                 fused: bool = False, cache_dir: Optional[str] = None):
        super().__init__()
        self.activation = activation
        self.num_channels = num_channels
        self._param_names = [s.name for s in activation.slots]
        shape = () if num_channels is None else (int(num_channels),)
        for slot in activation.slots:
            self.register_parameter(slot.name, nn.Parameter(torch.full(shape, slot.init)))
        self.set_fused(fused, cache_dir)

    def set_fused(self, fused: bool, cache_dir: Optional[str] = None) -> "ActivationModule":
        """Run the compiled (fused) or the eager function from now on; a single built-in
        operator stays eager (it is one kernel already).  The shared function is resolved (and
        for fused modules created) here, not in forward."""
        program = self.activation.program
        self.fused = bool(fused and program.worth_fusing)
        self._fn = (COMPILED.fused(program, self.activation.fused_program, cache_dir)
                    if self.fused else COMPILED.eager(program))
        return self

    @property
    def param_names(self) -> tuple:
        """The names of this site's learnable scalars (its parameters), in the tree's order."""
        return tuple(self._param_names)

    @property
    def function(self):
        """The function this site runs: the shared compiled one (fused) or the eager one."""
        return self._fn

    def forward(self, x):
        y = self._raw_forward(x)
        norm = self.activation.normalization
        return y if norm is None else norm.apply(y)

    def _raw_forward(self, x):
        params = [getattr(self, name) for name in self._param_names]
        if self.fused:
            y = fusion.call_in_memory_order(self._fn, x, params, self.num_channels is not None)
            if y is not None:
                return y
        if self.num_channels is not None:
            shape = (-1,) + (1,) * (x.dim() - 2)
            params = [p.view(shape) for p in params]
        return self._fn(x, *params)

    def parameter_values(self) -> dict:
        """Current values of this site's scalars: name -> float or list (per channel)."""
        return {name: getattr(self, name).detach().cpu().tolist() for name in self._param_names}

    def extra_repr(self) -> str:
        parts = [repr(self.activation.expression)]
        if self._param_names:
            parts.append(f"params={self._param_names}")
        if self.num_channels is not None:
            parts.append(f"num_channels={self.num_channels}")
        if self.fused:
            parts.append("fused=True")
        if self.activation.normalization is not None:
            parts.append(f"normalized={self.activation.normalization}")
        return ", ".join(parts)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fn", None)  # compiled functions are process-local; rebuilt on load
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.set_fused(self.fused)


class Activation:
    """An expression tree over a DEAP primitive set, with optional learnable scalars."""

    def __init__(self, tree, primitives="pangaea", params: Iterable[int] = (),
                 normalization: Optional[Normalization] = None):
        self.pset: ActivationPrimitiveSet = load_primitive_set(primitives)
        if isinstance(tree, str):
            tree = parse(tree, self.pset)
        if not isinstance(tree, gp.PrimitiveTree):
            tree = gp.PrimitiveTree(tree)
        self.tree = _checked_tree(tree, self.pset)
        self.params = _checked_params(params, tree)
        if normalization is not None and not isinstance(normalization, Normalization):
            raise UserError(f"normalization must be a Normalization (or None), got "
                            f"{type(normalization).__name__}")
        #: (f(x) - shift) / scale applied to the output (:meth:`normalized`), or None
        self.normalization: Optional[Normalization] = normalization
        self._program: Optional[Program] = None
        self._fused_program: Optional[Program] = None
        self._slots: Optional[list] = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_string(cls, text: str, primitives="pangaea", params: Iterable[int] = ()) -> "Activation":
        """Parse DEAP prefix notation, e.g. ``"mul(x, sigmoid(x))"`` (never eval'd)."""
        return cls(parse(text, load_primitive_set(primitives)), primitives, params)

    @classmethod
    def from_run(cls, run, rank: int = 1) -> "Activation":
        """The ``rank``-th function of a search run directory, with its best placement of
        learnable scalars -- the function ``gp-activations export RUN --rank RANK`` exports
        and the search's table ranks ``rank``-th (affine functions left out unless the run
        allows them).  Its scalars start at their initial values; the trained ones are in
        ``gp-activations export RUN --with-learned-params``."""
        from .report import activation_from_run  # the assess layer reads runs (see the layout)

        return activation_from_run(run, rank)

    @classmethod
    def from_json(cls, data) -> "Activation":
        """Inverse of :meth:`to_json` (accepts the JSON text or the decoded dict)."""
        data = _checked_json(data)
        act = cls.from_string(data["expression"], data["primitives"], data["params"])
        slots = data.get("slots")
        if slots is not None and act.slot_names != [s["name"] for s in slots]:
            raise UserError("activation JSON: 'slots' do not match the expression and params")
        if data.get("normalization") is not None:
            try:
                norm = Normalization.from_dict(data["normalization"])
            except UserError as exc:
                raise UserError(f"activation JSON: {exc}") from None
            act = act.with_normalization(norm)
        return act

    def with_params(self, params: Iterable[int]) -> "Activation":
        """The same tree with learnable scalars at ``params`` (normalised anew if this is)."""
        act = Activation(self.tree, self.pset, params)
        return act.normalized() if self.normalization is not None else act

    def normalized(self) -> "Activation":
        """This function with its output normalised: (f(x) - shift) / scale, the constants
        making the output zero-mean and unit-variance under N(0, 1) inputs, with the scalars at
        their initial values (:mod:`gp_activations.normalization`); fixed from then on.  A
        function that is constant or not finite there has none (a :class:`UserError`)."""
        if self.normalization is not None:
            return self
        plain = Activation(self.tree, self.pset, self.params)
        return plain.with_normalization(_normalization_of(plain, id(plain.pset)))

    def with_normalization(self, normalization: Optional[Normalization]) -> "Activation":
        """This function with the given output normalisation (None: the plain function)."""
        return Activation(self.tree, self.pset, self.params, normalization)

    # -- structure ---------------------------------------------------------------------------
    @property
    def expression(self) -> str:
        return str(self.tree)

    @property
    def primitives(self) -> str:
        return self.pset.spec

    @property
    def slots(self) -> list[ParamSlot]:
        if self._slots is None:
            self._slots = param_slots(self.tree, self.pset, self.params)
        return self._slots

    @property
    def slot_names(self) -> list[str]:
        return [s.name for s in self.slots]

    def slot_dicts(self) -> list[dict]:
        return [s.to_dict() for s in self.slots]

    @property
    def program(self) -> Program:
        if self._program is None:
            self._program = generate(self.tree, self.pset, self.params)
        return self._program

    @property
    def fused_program(self) -> Program:
        """The source torch.compile traces (same function and arguments as :attr:`program`)."""
        if self._fused_program is None:
            self._fused_program = generate(self.tree, self.pset, self.params, fused=True)
        return self._fused_program

    @property
    def size(self) -> int:
        return len(self.tree)

    @property
    def height(self) -> int:
        return self.tree.height

    @property
    def estimated_cost(self) -> float:
        """Forward time in ReLU units: the operators' costs plus one multiply per edge scalar."""
        ops = sum(self.pset.operators[n.name].cost for n in self.tree if isinstance(n, gp.Primitive))
        return ops + REGISTRY["mul"].cost * len(self.params)

    @property
    def operator_count(self) -> int:
        return sum(isinstance(n, gp.Primitive) for n in self.tree)

    # -- torch -------------------------------------------------------------------------------
    def module(self, num_channels: Optional[int] = None, fused: bool = False,
               cache_dir: Optional[str] = None) -> ActivationModule:
        """A fresh module (one per activation site); per-channel scalars with ``num_channels``."""
        return ActivationModule(self, num_channels, fused, cache_dir)

    def factory(self, per_channel: bool = False, fused: bool = False, cache_dir=None):
        """An activation factory for model builders: ``factory(num_channels=C)`` -> module."""

        def make(num_channels: Optional[int] = None) -> ActivationModule:
            return self.module(num_channels if per_channel else None, fused, cache_dir)

        make.activation = self
        return make

    def __call__(self, x: torch.Tensor, values: Optional[dict] = None) -> torch.Tensor:
        """Evaluate on a tensor with the scalars at their initial (or given) values."""
        fn = COMPILED.eager(self.program)
        args = []
        for slot in self.slots:
            v = slot.init if values is None else values.get(slot.name, slot.init)
            v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
            if v.dim() == 1:  # per-channel values: channels are dimension 1, as in module()
                v = v.view((-1,) + (1,) * (x.dim() - 2))
            args.append(v)
        y = fn(x, *args)
        return y if self.normalization is None else self.normalization.apply(y)

    # -- symbolic ------------------------------------------------------------------------------
    def sympy(self, simplify: bool = False, values: Optional[dict] = None) -> sympy.Expr:
        """The mathematical form; scalars as symbols p_i, β_i or, with ``values``, numbers.

        It is the function the module computes wherever no protection is active (an operand
        beyond a clamp, a denominator within 1e-6 of 0, ...).  Where a protection is active at
        a *constant* -- ``logabs(zero)``, ``div(x, zero)``, ``div(x, 1e-9)``, or ``sub(x, x)``
        as a denominator -- the value the module uses there is written instead (see
        :func:`_symbolic_tree`).  A tree too deep for sympy (:class:`SymbolicDepthError`) or
        whose form would be too large (:class:`SymbolicSizeError`) is a :class:`UserError`.
        """
        with _symbolic_depth_guard(self):
            result = _symbolic_tree(self, values)
            if self.normalization is not None:
                norm = self.normalization
                result = (result - sympy.Float(norm.shift)) / sympy.Float(norm.scale)
            return sympy.simplify(result) if simplify else result

    def latex(self, simplify: bool = False, values: Optional[dict] = None, digits: int = 4) -> str:
        """LaTeX as a paper would print it (σ, erf, |x|, fractions; floats to ``digits``); a
        normalised function as \\frac{f(x) - shift}{scale}."""
        if self.normalization is not None:
            return _normalized_latex(self, simplify, values, digits)
        with _symbolic_depth_guard(self):
            expr = self.sympy(simplify=simplify, values=values)
            expr = expr.xreplace({f: sympy.Float(f, digits) for f in expr.atoms(sympy.Float)})
            return sympy.latex(expr)

    # -- export --------------------------------------------------------------------------------
    def torch_source(self, values=None, class_name: str = "EvolvedActivation") -> str:
        """A standalone Python file with one ``nn.Module`` class; imports only torch.

        ``values``: learned scalars to bake in.  One ``{name: float | [per-channel floats]}``
        dict: every instance starts from it (``VALUES``).  Per activation site: a dict
        ``{site name: {name: value}}`` in network order (what a run records; site names are
        the qualified module names) or a list of dicts (named ``site0``, ``site1``, ...):
        the file then has ``SITES``, ``LEARNED`` and ``LEARNED_MEAN``, the class takes
        ``site=`` (an index or a name; None = the mean over sites; a site that does not exist
        is a ValueError / KeyError listing them) and ``apply_to(model, by="name" | "order" |
        "mean")`` maps the sites onto a network.  A missing parameter takes its initial value.
        """
        return export_torch_source(self, values, class_name)

    EXPORT_FORMATS = ("latex", "sympy", "torch", "json")

    def export(self, fmt: str, values=None) -> str:
        """The one export entry point: ``fmt`` is latex, sympy, torch or json.

        ``values``: learned scalars -- one dict for the whole function, or (torch) a list of
        dicts, one per activation site; latex/sympy take one dict (a list is averaged over
        sites by the caller).
        """
        one = values if isinstance(values, dict) else None
        if fmt == "latex":
            return self.latex(values=one)
        if fmt == "sympy":
            with _symbolic_depth_guard(self):
                return str(self.sympy(values=one))
        if fmt == "torch":
            return self.torch_source(values=values)
        if fmt == "json":
            data = self.to_dict()
            if values is not None:
                data["learned"] = values
            return json.dumps(data, indent=2)
        raise UserError(f"unknown format {fmt!r}; choose {', '.join(self.EXPORT_FORMATS)}")

    def to_dict(self) -> dict:
        data = {"format": JSON_FORMAT, "version": 1, "expression": self.expression,
                "primitives": self.primitives, "params": list(self.params),
                "slots": self.slot_dicts()}
        if self.normalization is not None:
            data["normalization"] = self.normalization.to_dict()
        return data

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    # -- identity --------------------------------------------------------------------------------
    def _key(self):
        return (self.primitives, self.expression, self.params, self.normalization)

    def __eq__(self, other):
        return isinstance(other, Activation) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __str__(self):
        text = self.expression
        if self.params:
            text = f"{text} @ params {list(self.params)}"
        return text if self.normalization is None else f"{text}, normalized"

    def __repr__(self):
        extra = f", params={list(self.params)}" if self.params else ""
        if self.normalization is not None:
            extra += f", normalization={self.normalization!r}"
        return f"Activation({self.expression!r}, primitives={self.primitives!r}{extra})"

    def __deepcopy__(self, memo):
        return self  # immutable

    def __reduce__(self):
        return (Activation.from_json, (self.to_json(indent=None),))


@functools.lru_cache(maxsize=1024)
def _normalization_of(plain: "Activation", pset_id: int) -> Normalization:
    """The constants of ``plain`` (three grids, ~0.2 s), once per function and loaded search
    space in a process: halving's rungs, a race's seeds and a report's tables reuse them."""
    return Normalization.of(plain, f"activation {plain}")


def _checked_tree(tree: gp.PrimitiveTree, pset: ActivationPrimitiveSet) -> gp.PrimitiveTree:
    """``tree``, once every operator and terminal is known to be in ``pset``."""
    for node in tree:
        if isinstance(node, gp.Primitive) and node.name not in pset.operators:
            raise UserError(f"operator {node.name!r} is not in search space {pset.name!r}")
        if (isinstance(node, gp.Terminal) and not is_literal(node) and node.value != "x"
                and node.value not in pset.constants):
            raise UserError(f"terminal {node.value!r} is not in search space {pset.name!r}")
    return tree


def _checked_params(params: Iterable[int], tree: gp.PrimitiveTree) -> tuple:
    """The sorted distinct node positions carrying learnable scalars, all inside ``tree``."""
    params = tuple(sorted({int(p) for p in params}))
    bad = [p for p in params if not 0 <= p < len(tree)]
    if bad:
        raise UserError(f"parameter positions {bad} are outside the tree's nodes "
                        f"0..{len(tree) - 1} of {str(tree)!r}")
    return params


def _checked_json(data) -> dict:
    """An activation JSON document (text or decoded) as a dict whose fields have the right
    types; else one :class:`UserError` line."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8/16/32
            raise UserError(f"activation JSON is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise UserError(f"not an activation JSON document (expected \"format\": \"{JSON_FORMAT}\")")
    for key, kind in (("expression", str), ("primitives", str), ("params", list)):
        if not isinstance(data.get(key), kind):
            raise UserError(f"activation JSON: {key!r} must be a {kind.__name__}")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in data["params"]):
        raise UserError(f"activation JSON: 'params' must be a list of node indices (integers), "
                        f"got {data['params']!r}")
    slots = data.get("slots")
    if slots is not None and not (isinstance(slots, list) and
                                  all(isinstance(s, dict) and "name" in s for s in slots)):
        raise UserError("activation JSON: 'slots' must be a list of objects with a 'name'")
    return data


def _normalized_latex(act: "Activation", simplify: bool, values, digits: int) -> str:
    """\\frac{f(x) - shift}{scale} of a normalised ``act`` (the shift left out where it is an
    odd function's rounding error)."""
    norm = act.normalization
    inner = act.with_normalization(None).latex(simplify, values, digits)
    scale = sympy.latex(sympy.Float(norm.scale, digits))
    if abs(norm.shift) < 5e-5 * norm.scale:
        return rf"\frac{{{inner}}}{{{scale}}}"
    shift = sympy.latex(sympy.Float(abs(norm.shift), digits))
    return rf"\frac{{{inner} {'-' if norm.shift >= 0 else '+'} {shift}}}{{{scale}}}"


def _slot_symbol(slot: ParamSlot) -> sympy.Symbol:
    base = slot.name.rstrip("0123456789")
    index = slot.name[len(base):]
    return sympy.Symbol(f"{base}_{index}", real=True)


@functools.lru_cache(maxsize=4096)  # nsimplify is slow; sympy numbers are immutable
def _number(value: float, exact: bool) -> sympy.Expr:
    """A literal as sympy: small exact forms (1/2, √2/2) where they are exact, else a Float."""
    if value == int(value) and abs(value) < 1e15:
        return sympy.Integer(int(value))
    try:
        guess = sympy.nsimplify(value, tolerance=1e-15, rational=False)
        if sympy.count_ops(guess) <= 4 and float(guess) == value:
            return guess
    except (TypeError, ValueError, ZeroDivisionError):  # pragma: no cover - sympy quirks
        pass
    return sympy.Float(value, 15 if exact else 4)


# ---------------------------------------------------------------------------------------------
# The symbolic form
# ---------------------------------------------------------------------------------------------
class SymbolicDepthError(UserError):
    """A tree too deep for sympy: its constructors and printers recurse once per level (or more),
    so a few hundred nested levels exhaust Python's recursion limit.  The compiled module, the
    torch export and JSON have no depth limit."""

    def __init__(self, depth: int):
        self.depth = depth
        super().__init__(f"expression is {depth} levels deep; sympy/LaTeX cannot represent it "
                         f"-- export it with --format torch or json")


@contextlib.contextmanager
def _symbolic_depth_guard(act: "Activation"):
    """Turn sympy's RecursionError on a deep tree into one clear :class:`SymbolicDepthError`."""
    try:
        yield
    except RecursionError:
        raise SymbolicDepthError(act.height) from None


class SymbolicSizeError(UserError):
    """A tree whose symbolic form grows beyond what sympy builds and prints in reasonable time:
    an operator that uses its operand twice (i0e is e^{-|x|} I₀(x)) doubles the form per level."""

    def __init__(self, size: int, where: str):
        self.size = size
        super().__init__(f"the sympy/LaTeX form of this expression would have more than {size} "
                         f"operations (exceeded at {where}; operators that repeat their operand, "
                         f"like i0e, double it per level): too large for sympy/LaTeX -- export "
                         f"it with --format torch or json")


#: The torch export's docstring shows LaTeX for trees up to this many nodes: sympy's cost grows
#: faster than linearly (scale(scale(...)) of 3000 levels: a minute), the export's must not.
_DOCSTRING_LATEX_NODES = 1000


def _docstring_latex(act: "Activation") -> str:
    """The LaTeX line of the torch export's docstring, or a note where there is none."""
    if act.size > _DOCSTRING_LATEX_NODES:
        return (f"(omitted for an expression of {act.size} nodes; "
                f"gp-activations export --format latex prints it where sympy can)")
    try:
        return act.latex()
    except SymbolicDepthError as exc:
        return f"(omitted: the expression is {exc.depth} levels deep, too deep for sympy/LaTeX)"
    except SymbolicSizeError as exc:
        return f"(omitted: the form would have more than {exc.size} operations)"
    except UserError as exc:
        return f"(omitted: {exc})"


#: Forms that are never the value of the (always finite) module.
_NOT_FINITE = (sympy.S.ComplexInfinity, sympy.S.NaN, sympy.S.Infinity, sympy.S.NegativeInfinity,
               sympy.S.ImaginaryUnit)
#: Constant sub-forms kept symbolic (sin(1/2), √2/2) up to this many operations; longer ones,
#: and every one the module computes differently, are written as the module's number.
_MAX_CONSTANT_OPS = 8


#: Largest symbolic form built, in operations counted as printed (a shared subexpression each
#: time it occurs): this many, or 4 per tree node for bigger trees.
_MAX_FORM_SIZE = 20000


def _form_size(expr, memo: dict) -> int:
    """Operations in ``expr`` as printed, iteratively, each distinct subexpression visited once."""
    stack = [expr]
    while stack:
        e = stack[-1]
        if e in memo:
            stack.pop()
            continue
        pending = [a for a in e.args if a not in memo]
        if pending:
            stack.extend(pending)
            continue
        memo[e] = 1 + sum(memo[a] for a in e.args)
        stack.pop()
    return memo[expr]


def _clamp(lo, hi):
    return lambda v: min(max(v, lo), hi)


#: Protections of built-in binary operators that act on one operand by itself: applied to an
#: operand that is a number (the other depending on x), they change the function everywhere,
#: so the symbolic form takes the operand the module uses -- div(x, 1e-9) is 1e6·x, not 1e9·x.
_OPERAND_PROTECTIONS = {
    "div": (_clamp(-1e15, 1e15), lambda b: min(b, -1e-6) if b < 0 else max(b, 1e-6)),
    "interp": (_clamp(-1.5e38, 1.5e38), _clamp(-1.5e38, 1.5e38)),
}


def _finite_value(expr) -> Optional[float]:
    """The value of a form without free symbols as a float, or None (symbolic, not finite,
    not real)."""
    expr = sympy.sympify(expr)
    if expr.free_symbols:
        return None
    try:
        value = complex(sympy.N(expr, 20))
    except (TypeError, ValueError, ArithmeticError):
        return None
    if value.imag != 0 or not math.isfinite(value.real):
        return None
    return value.real


def _protected_value(op, operands: list, params: list) -> Optional[float]:
    """The operator's protected torch form applied to numbers, in float64 (None if not finite)."""
    def tensor(v):
        return torch.tensor(v, dtype=torch.float64)

    try:
        with torch.no_grad():
            value = float(op(*map(tensor, operands), params=list(map(tensor, params))))
    except (RuntimeError, TypeError, ValueError, ArithmeticError):  # e.g. a user operator
        return None
    return value if math.isfinite(value) else None


def _plain_constant(exact, numbers: list) -> bool:
    """Whether a constant form is worth keeping symbolic: short, and of moderate numbers only
    (i1e(1e20) is e^{-10^20}·I₁(10^20): sympy evaluates such forms only at great cost)."""
    def moderate(v, limit):
        return v == 0 or 1e-30 <= abs(float(v)) <= limit

    return (sympy.count_ops(exact) <= _MAX_CONSTANT_OPS
            and all(moderate(v, 1e4) for v in numbers[:-1]) and moderate(numbers[-1], 1e30)
            and all(moderate(f, 1e30) for f in exact.atoms(sympy.Float)))


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def _symbolic_node(op, operands: list, numbers: list, params: list, where: str):
    """(form, value) of one operator node from its operands' forms and values.

    ``numbers[i]``: operand i's value where its form is a number (None where it depends on x).
    An operator applied to numbers only is evaluated by its *protected* torch form -- the value
    the module computes -- and written symbolically only where the mathematical form agrees:
    log|0| is the module's log(1e-7), 0/0 its 0, never sympy's zoo or nan.
    """
    param_values = [_finite_value(p) for p in params]
    if all(v is not None for v in numbers + param_values):
        value = _protected_value(op, numbers, param_values)
        try:
            exact = op.sympy(*operands, *params)
        except (TypeError, ValueError, ArithmeticError):
            exact = None
        if value is None:  # the module is not finite here either (a user operator): keep sympy's
            if exact is None:
                raise UserError(f"{where} has no value: its torch form is not finite there")
            return exact, None
        if exact is not None and _plain_constant(exact, numbers + param_values + [value]):
            exact_value = _finite_value(exact)
            # (a form whose value underflows to the float 0, e^{-10^40}, is not the module's 0)
            if (exact_value is not None and _close(exact_value, value)
                    and (exact_value != 0 or exact.is_zero)):
                return exact, value
        return _number(value, exact=True), value
    operands = list(operands)
    guards = _OPERAND_PROTECTIONS.get(op.name) if REGISTRY.get(op.name) is op else None
    for i, v in enumerate(numbers):
        if guards and v is not None and guards[i](v) != v:
            operands[i] = _number(guards[i](v), exact=True)
    try:
        expr = op.sympy(*operands, *params)
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise UserError(f"{where} has no symbolic form: {exc}") from None
    if any(v is not None for v in numbers) and expr.has(*_NOT_FINITE):
        raise UserError(f"{where} has no finite symbolic form (sympy gives {expr}); "
                        f"export it with --format torch or json")
    return expr, _finite_value(expr) if not expr.free_symbols else None


def _symbolic_tree(act: "Activation", values: Optional[dict]) -> sympy.Expr:
    """The sympy form of ``act``, built bottom-up without recursion (see Activation.sympy)."""
    x = sympy.Symbol("x", real=True)
    symbols = {s.name: _slot_symbol(s) for s in act.slots}
    if values:
        for name, v in values.items():
            if name in symbols and isinstance(v, (int, float)):
                symbols[name] = _number(float(v), exact=False)
    edge = {s.node: symbols[s.name] for s in act.slots if s.kind == "edge"}
    own: dict[int, list] = {}
    for s in act.slots:
        if s.kind == "operator":
            own.setdefault(s.node, []).append(symbols[s.name])
    kids = children(act.tree)
    form: list = [None] * len(act.tree)
    number: list = [None] * len(act.tree)  # the module's value where the form is a number
    sizes: dict = {}
    max_size = max(_MAX_FORM_SIZE, 4 * len(act.tree))
    for idx in range(len(act.tree) - 1, -1, -1):
        node = act.tree[idx]
        if isinstance(node, gp.Primitive):
            op = act.pset.operators[node.name]
            expr, value = _symbolic_node(op, [form[k] for k in kids[idx]],
                                         [number[k] for k in kids[idx]], own.get(idx, []),
                                         f"{node.name} (node {idx})")
            if _form_size(expr, sizes) > max_size:
                raise SymbolicSizeError(max_size, f"{node.name} (node {idx})")
        else:
            value = leaf_value(node, act.pset)
            expr = x if value is None else _number(value, exact=not is_literal(node))
        if idx in edge:
            expr = expr * edge[idx]
            scale = _finite_value(edge[idx])
            value = value * scale if value is not None and scale is not None else (
                _finite_value(expr) if not expr.free_symbols else None)
        form[idx], number[idx] = expr, value
    return form[0]


# ---------------------------------------------------------------------------------------------
# Standalone torch export
# ---------------------------------------------------------------------------------------------
def _helper_source(fn, name: Optional[str] = None) -> str:
    """Source of a user operator's function without its decorators, bound to ``name``.

    ``name`` is the operator's name, which the generated code calls; when it differs from the
    function's own (``@space.unary(name=...)``) an alias line follows the definition.
    """
    name = name or fn.__name__
    try:
        lines = textwrap.dedent(inspect.getsource(fn)).splitlines()
    except (OSError, TypeError):
        raise UserError(f"cannot export operator {name!r}: its source is not available") from None
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("def ")), None)
    if start is None or fn.__name__ == "<lambda>":
        raise UserError(f"cannot export operator {name!r}: write it as a `def` function "
                        f"(a lambda's source cannot be exported)")
    source = "\n".join(lines[start:]) + "\n"
    if name != fn.__name__:
        source += f"\n\n{name} = {fn.__name__}\n"
    return source


def _plain_value(name, value):
    """A learned value as a float or a list of floats (accepts ints, numpy and torch values)."""
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        value = value.tolist()
    try:
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"learned value of {name!r} must be a number or a list of numbers "
                        f"(one per channel), got {value!r}") from None


def _learned_values(act: Activation, values):
    """``(one, sites)`` from the ``values`` given to the torch export.

    ``one``: a single ``{param: value}`` dict, every instance's values.  ``sites``: an ordered
    ``{site name: {param: value}}`` -- given as such a dict (the run store's per-epoch record,
    names = qualified module names in network order) or as a list of dicts (named ``site0``,
    ``site1``, ...).  Every dict comes back complete, in slot order; a missing parameter takes
    its initial value.  At most one of the two is not None.
    """
    if values is None or (isinstance(values, (dict, list, tuple)) and len(values) == 0):
        return None, None
    names = act.slot_names

    def clean(site, where=""):
        if not isinstance(site, dict):
            raise UserError(f"learned values{where} must be a dict {{parameter: value}}, got "
                            f"{type(site).__name__} (give one dict, a list of dicts, one per "
                            f"site, or a dict {{site name: {{parameter: value}}}})")
        unknown = set(site) - set(names)
        if unknown:
            raise UserError(f"learned values{where} name unknown parameters {sorted(unknown)}; "
                            f"this activation has {names}")
        return {s.name: _plain_value(s.name, site.get(s.name, s.init)) for s in act.slots}

    if isinstance(values, (list, tuple)):
        return None, {f"site{i}": clean(site, f" of site {i}") for i, site in enumerate(values)}
    if isinstance(values, dict) and all(isinstance(v, dict) for v in values.values()):
        bad = [k for k in values if not isinstance(k, str) or not k]
        if bad:
            raise UserError(f"learned values per site must be keyed by site name (a non-empty "
                            f"string, the module's qualified name), got {bad[0]!r}")
        return None, {name: clean(site, f" of site {name!r}") for name, site in values.items()}
    return clean(values), None


def _site_mean(sites: dict, slots) -> dict:
    """Each scalar's mean over sites: element-wise when every site has the same shape for it
    (all scalars, or per-channel lists of one length), else over sites and channels."""
    out = {}
    for slot in slots:
        vals = [site[slot.name] for site in sites.values()]
        lists = [v for v in vals if isinstance(v, list)]
        if not lists:
            out[slot.name] = sum(vals) / len(vals)
        elif len(lists) == len(vals) and len({len(v) for v in vals}) == 1 and vals[0]:
            out[slot.name] = [sum(col) / len(col) for col in zip(*vals)]
        else:
            flat = [x for v in vals for x in (v if isinstance(v, list) else [v])]
            out[slot.name] = sum(flat) / len(flat) if flat else slot.init
    return out


def _dict_source(values: dict) -> str:
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in values.items()) + "}"


def _sites_source(sites: dict, mean: dict) -> str:
    rows = ["# Learned values of the scalars, one entry per activation site of the network they",
            "# were trained in, in that network's forward order; a site's name is its qualified",
            "# module name there (model.named_modules()).  LEARNED_MEAN: their mean over sites.",
            "SITES = ["]
    rows += [f"    {name!r}," for name in sites]
    rows += ["]", "LEARNED = {"]
    rows += [f"    {name!r}: {_dict_source(vals)}," for name, vals in sites.items()]
    rows += ["}", f"LEARNED_MEAN = {_dict_source(mean)}"]
    return "\n".join(rows)


def _learned_doc(class_name: str, one, sites) -> list[str]:
    """Lines of the exported file's docstring that say what its learned values are."""
    if one is not None:
        return ["", "Learned values: VALUES, every instance's initial values."]
    if sites is None:
        return []
    return ["",
            f"Learned values: {len(sites)} activation sites of the network they were trained in",
            "(SITES and LEARNED, in forward order; a name is the site's qualified module name).",
            f"{class_name}(site=i) or {class_name}(site=name) takes one site's values;",
            "site=None, the default, takes LEARNED_MEAN, their mean over sites.  An index out of",
            "range is a ValueError, an unknown name a KeyError; both list SITES.",
            f"{class_name}.apply_to(model, by='name' | 'order' | 'mean') puts one module per",
            "activation of another network: see its docstring."]


_LEARNED_PARAMETER_SOURCE = '''\
def _learned_parameter(value, num_channels, name, where):
    """A learned value as a parameter: as learned, or num_channels values (a scalar repeats)."""
    value = torch.tensor(value)
    if num_channels is None:
        return torch.nn.Parameter(value)
    if value.dim() == 0:
        return torch.nn.Parameter(value.expand(num_channels).clone())
    if value.numel() != num_channels:
        raise ValueError(f"{where}[{name!r}] has {value.numel()} per-channel values; "
                         f"num_channels={num_channels} does not fit")
    return torch.nn.Parameter(value)'''

_SITES_CLASS_DOC = '''

    With the scalars learned at __N__ activation sites (SITES, LEARNED).

    ``site``: an index into SITES (negative counts from the end) or a site name takes that
    site's values; None (the default) takes LEARNED_MEAN, the mean over sites (per channel
    when every site has the same number of channels).  There is no fallback: an index out
    of range is a ValueError, an unknown name a KeyError, both listing SITES.
    ``num_channels``: C gives each parameter C values (a learned scalar repeats; values
    learned per channel must have C entries); None keeps the values as learned.

    __CLASS__.apply_to(model) puts one module at each activation site of a network
    (activation modules, further calls of one module, functional calls such as F.relu).
    '''

def _apply_to_source() -> str:
    """The sites machinery that the exported ``apply_to`` calls: gp_activations.replace's
    standalone core (torch only), embedded verbatim so that the file needs no gp_activations.
    Read as text between its markers, not imported (replace imports this module)."""
    text = (Path(__file__).resolve().parent / "replace.py").read_text(encoding="utf-8")
    begin = text.index("# ---- standalone core begin")
    core = text[text.index("\n", begin) + 1:text.index("# ---- standalone core end")]
    return ("# Activation sites of a network (gp_activations.replace_activations' own code), for\n"
            "# apply_to: registered activation modules, further calls, functional calls.\n"
            + core.rstrip())


_SITES_METHODS_SOURCE = '''
    @staticmethod
    def site_name(site):
        """The name in SITES of ``site``, an index or a name; None stays None (the mean)."""
        if site is None or isinstance(site, str):
            if site is not None and site not in LEARNED:
                raise KeyError(f"unknown site {site!r}; the {len(SITES)} learned sites are "
                               f"{SITES}")
            return site
        if isinstance(site, bool) or not hasattr(site, "__index__"):
            raise TypeError(f"site must be an index into SITES, a site name or None, "
                            f"got {type(site).__name__}")
        index = site.__index__()
        if not -len(SITES) <= index < len(SITES):
            raise ValueError(f"site {index} is out of range: {len(SITES)} sites were learned "
                             f"(index 0..{len(SITES) - 1}): {SITES}")
        return SITES[index]

    @classmethod
    def apply_to(cls, model, by="name", types=None, where=None, calls=True):
        """Put an instance of this class at every activation site of ``model``; returns the
        model with them: ``model`` itself (its modules replaced in place), or a
        torch.fx.GraphModule of it when calls had to become modules.

        The sites are gp_activations.replace_activations' (the same code, embedded in this
        file): every registered hidden activation module -- types=None: torch.nn's ReLU,
        ReLU6, LeakyReLU, PReLU, ELU, SELU, CELU, GELU, SiLU, Mish, Hardswish, Tanh, Softplus,
        ..., transformers' and timm's activation classes, not the Sigmoid / Hardsigmoid of
        gates -- and every module of this class; then, found by tracing model with torch.fx,
        every further call of a module that forward calls several times (``<name>_1``, ...)
        and every functional call (F.relu, F.gelu, torch.tanh, x.relu_(), ...), which gets a
        module ``<path>.relu_fx``, ... in the module whose forward makes it.  ``types``:
        exactly these module classes (and their functional calls); ``where(name, what) ->
        bool`` narrows the choice (``what``: the module, or the function called).
        ``calls=False``: no tracing, only the registered modules.  Sites are ordered as
        ``named_modules`` lists them in the result.

        * ``by="name"``: the site named N takes site N.  For the network the values were
          learned in (built again): its sites must be exactly SITES, else a ValueError names
          the missing and the unknown ones.
        * ``by="order"``: the i-th site takes SITES[i].  The counts must be equal, else a
          ValueError; meaningful for a network with the same layout of activations.
        * ``by="mean"``: every site takes LEARNED_MEAN (site=None); fits any network.

        A module whose forward torch.fx cannot trace (control flow on values or shapes) keeps
        its registered modules replaced and its children traced one by one, but a functional
        call or a further call of one module written in that forward itself is not reached:
        replace_activations warns about it, this file (torch only) cannot.  A model without
        any site is a ValueError; on any error model is left as it was.  New modules are on
        the CPU: move the model afterwards as usual.
        """
        if by not in ("name", "order", "mean"):
            raise ValueError(f"by must be 'name', 'order' or 'mean', got {by!r}")
        mode = True if calls else None
        if isinstance(model, cls) or (is_hidden_activation(model) if types is None
                                      else isinstance(model, tuple(types))):
            raise ValueError(f"model is itself an activation module; use {cls.__name__}(site=...)")
        _, found, _ = _act_sites(model, None, types, where, mode, dry_run=True, also=(cls,))
        targets = [name for name, _, _ in found]
        kinds = ("hidden activations" if types is None
                 else ", ".join(t.__name__ for t in types)) + f", {cls.__name__}"
        if by == "name":
            missing = [s for s in SITES if s not in targets]
            unknown = [t for t in targets if t not in LEARNED]
            if missing or unknown:
                raise ValueError(f"by='name': the activation sites of model ({kinds}) are not "
                                 f"the learned sites: missing {missing}, not learned {unknown}; "
                                 f"the {len(SITES)} learned sites are {SITES} (by='order' maps "
                                 f"by position, by='mean' fits any network)")
            chosen = targets
        elif by == "order":
            if len(targets) != len(SITES):
                raise ValueError(f"by='order': model has {len(targets)} activation modules and "
                                 f"calls ({kinds}) but {len(SITES)} sites were learned "
                                 f"({SITES}); by='mean' fits any network")
            chosen = list(SITES)
        else:
            chosen = [None] * len(targets)
        site_of = dict(zip(targets, chosen))
        result, _, _ = _act_sites(model, lambda name: cls(site=site_of[name]), types, where,
                                  mode, also=(cls,))
        return result

    def extra_repr(self):
        text = "site=None (mean over sites)" if self.site is None else f"site={self.site!r}"
        return text + ("" if self.num_channels is None else f", num_channels={self.num_channels}")
'''


def export_torch_source(act: Activation, values=None, class_name="EvolvedActivation") -> str:
    """The standalone ``.py`` of ``act`` (imports only torch): docstring, the user operators'
    functions, the generated function, the learned values (``values``, see
    :func:`_learned_values`) and the module class ``class_name``."""
    program = act.program
    one, sites = _learned_values(act, values)
    parts = [_export_docstring(act, class_name, one, sites), "import torch"]
    parts += [_helper_source(fn, name).rstrip() for name, fn in program.helpers.items()]
    parts.append(program.source.rstrip())
    parts += _learned_values_source(act, one, sites)
    parts.append(_export_class_source(act, class_name, one, sites))
    return "\n\n\n".join(parts[:1]) + "\n\n" + "\n\n\n".join(parts[1:]) + "\n"


def _export_docstring(act: Activation, class_name: str, one, sites) -> str:
    """The exported file's docstring: version, expression, parameters, LaTeX, learned values."""
    doc_lines = [
        f"Activation function exported by gp-activations {__version__}.",
        "",
        f"Expression: {act.expression}",
        f"Primitives: {act.primitives}",
    ]
    for slot in act.slots:
        doc_lines.append(f"Parameter {slot.name}: {slot.label}, init {slot.init:g}")
    if act.normalization is not None:
        doc_lines.append(f"Output normalised: {act.normalization} (zero mean, unit variance "
                         f"for N(0, 1) inputs, scalars at their initial values)")
    doc_lines += ["", "LaTeX:", f"    {_docstring_latex(act)}"]
    doc_lines += _learned_doc(class_name, one, sites)
    return '"""' + "\n".join(doc_lines).replace("\\", "\\\\") + '\n"""'


def _learned_values_source(act: Activation, one, sites) -> list[str]:
    """The exported file's learned values and the code that reads them (none without values)."""
    if one is not None:
        return ["# Learned values of the scalars: every instance starts from them.\n"
                f"VALUES = {_dict_source(one)}", _LEARNED_PARAMETER_SOURCE]
    if sites is not None:
        return [_sites_source(sites, _site_mean(sites, act.slots)), _LEARNED_PARAMETER_SOURCE,
                _apply_to_source()]
    return []


def _export_class_source(act: Activation, class_name: str, one, sites) -> str:
    """The exported module class: its docstring, ``__init__`` (and, with per-site values, the
    sites methods) and ``forward``."""
    init_args = "self, num_channels=None" + (", site=None" if sites is not None else "")
    doc = (_SITES_CLASS_DOC.replace("__CLASS__", class_name).replace("__N__", str(len(sites)))
           if sites is not None else "")
    body = [f"class {class_name}(torch.nn.Module):",
            f'    """{act.expression}{doc}"""',
            "",
            f"    expression = {act.expression!r}",
            "",
            f"    def __init__({init_args}):",
            "        super().__init__()",
            "        self.num_channels = num_channels"]
    body += _export_init_lines(act, one, sites)
    body += ["", "    def forward(self, x):"]
    body += _export_forward_lines(act)
    return "\n".join(body)


def _export_init_lines(act: Activation, one, sites) -> list[str]:
    """The rest of the exported ``__init__``: the parameters from the learned values (per site,
    with the sites methods after it; or one set) or at their initial values."""
    if sites is not None:
        lines = ["        self.site = self.site_name(site)",
                 "        learned = LEARNED_MEAN if self.site is None else LEARNED[self.site]",
                 "        where = 'LEARNED_MEAN' if self.site is None else f'LEARNED[{self.site!r}]'"]
        lines += [f"        self.{slot.name} = _learned_parameter("
                  f"learned[{slot.name!r}], num_channels, {slot.name!r}, where)"
                  for slot in act.slots]
        return lines + [_SITES_METHODS_SOURCE.rstrip("\n")]
    if one is not None:
        return [f"        self.{slot.name} = _learned_parameter("
                f"VALUES[{slot.name!r}], num_channels, {slot.name!r}, 'VALUES')"
                for slot in act.slots]
    return (["        shape = () if num_channels is None else (num_channels,)"]
            + [f"        self.{slot.name} = torch.nn.Parameter(torch.full(shape, {slot.init!r}))"
               for slot in act.slots])


def _export_forward_lines(act: Activation) -> list[str]:
    """The body of the exported ``forward``: per-channel values viewed along dimension 1; the
    output normalisation, if any, as two constants."""
    names = act.slot_names
    call = f"{act.program.function_name}(x{', *params' if names else ''})"
    norm = act.normalization
    if norm is not None:
        call = f"({call} - {norm.shift!r}) / {norm.scale!r}"
    if not names:
        return [f"        return {call}"]
    return [f"        params = [{', '.join('self.' + n for n in names)}]",
            "        shape = (-1,) + (1,) * (x.dim() - 2)",
            "        params = [p.view(shape) if p.dim() == 1 else p for p in params]",
            f"        return {call}"]


def latex_or_note(act: Activation) -> str:
    """``act.latex()``, or a short note for tables and plots where no LaTeX can be produced
    (a tree too deep for sympy): a report must not fail on one such function."""
    try:
        return act.latex()
    except UserError as exc:
        return f"(no LaTeX: {exc})"
