"""The activation compiler: an expression tree becomes straight-line Python source.

One statement per node (children first), so a tree's depth is never limited by Python's parser
or recursion -- unlike ``deap.gp.compile``, which nests the whole tree into one expression.
The same source is executed in-process (:mod:`gp_activations.activation`) and written into the
standalone torch export, so the two cannot disagree.

Two small optimisations keep the compiled function as cheap as hand-written torch:

* **interval analysis** -- each node gets the range of its value (x itself: all finite
  float32); an operator's unprotected ``fast`` form is emitted when the ranges prove it cannot
  overflow (``x * sigmoid(x)`` and ``relu(x) + 0.01 * min(x, 0)`` need no guard; ``exp(x)``
  does).  Learnable scalars are taken at their initial value for this analysis;
* **common subexpressions** -- identical parameter-free subtrees are computed once.

For torch.compile only (``generate(..., fused=True)``; the eager function and the export keep
the operators' own forms), the exponential family shares one ``e = exp(min(u, 30))`` per
operand ``u``: ``tanh(softplus(u)) = n / (n + 2)`` with ``n = e (e + 2)`` (mish's three
transcendentals become one exp), and where two or more of sigmoid / sigmul / softplus /
tanh∘softplus read the same ``u``, ``sigmoid(u) = e / (e + 1)`` and
``softplus(u) = u if u > 20 else log1p(e)`` (torch's threshold).  Beyond 30 each is 1 in
float32 already (the clamp keeps n finite; at 30, not 20, so that its bound, where torch's
clamp passes no gradient, is not softplus's threshold); below, the forms agree with torch to
a few ulp.  Inductor drops the statement a rewrite leaves unused (softplus under tanh).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deap import gp

from .expression import children, is_literal
from .operators import FLOAT32_MAX, REGISTRY


@dataclass(frozen=True)
class ParamSlot:
    """One learnable scalar of an activation (per site, or per channel of a site)."""

    name: str  # argument / attribute name, e.g. "p0" or "beta2"
    node: int  # index of the node in prefix order
    kind: str  # "edge": multiplies the node's output; "operator": the operator's own β
    init: float
    label: str  # human-readable placement

    def to_dict(self):
        return {"name": self.name, "node": self.node, "kind": self.kind, "init": self.init,
                "label": self.label}


@dataclass
class Program:
    """Generated source of ``def <name>(x, *params)`` plus what executing it needs."""

    source: str
    function_name: str
    arg_names: list
    helpers: dict = field(default_factory=dict)  # user operators: name -> python function
    kernel_count: int = 0  # operator statements (a rough count of eager kernels)
    depends_on_x: bool = True

    @property
    def worth_fusing(self) -> bool:
        """torch.compile pays off from two fused operations on; one built-in op stays eager."""
        return self.kernel_count >= 2 or bool(self.arg_names[1:])


def node_label(node) -> str:
    if isinstance(node, gp.Primitive):
        return node.name
    return node.format()


def param_slots(tree, pset, edges) -> list[ParamSlot]:
    """Slots in prefix order: for each node its edge multiplier, then its operator's own β's."""
    edges = set(edges)
    slots: list[ParamSlot] = []
    for idx, node in enumerate(tree):
        label = node_label(node)
        if idx in edges:
            where = "output" if idx == 0 else f"edge above {label} (node {idx})"
            slots.append(ParamSlot(f"p{len(slots)}", idx, "edge", 1.0,
                                   f"multiplier on the {where}"))
        if isinstance(node, gp.Primitive):
            op = pset.operators[node.name]
            for pname, init in op.params:
                slots.append(ParamSlot(f"{pname}{len(slots)}", idx, "operator", float(init),
                                       f"{pname} of {label} (node {idx})"))
    return slots


def leaf_value(node, pset):
    """The float value of a constant terminal or literal, or None for x."""
    if is_literal(node):
        return float(node.value)
    if node.value == "x":  # DEAP renames the argument's value, not its name ("ARG0")
        return None
    return float(pset.constants[node.value])


_EXP_FAMILY = ("sigmoid", "sigmul", "softplus")


def _builtin(pset, name: str) -> bool:
    """``name`` is the built-in operator (not a user's operator of the same name)."""
    return pset.operators.get(name) is REGISTRY.get(name)


def _canonical(tree, kids, edge_param, op_params) -> tuple[list, list]:
    """Per node: whether a learnable scalar sits in its subtree, and its canonical text (the
    key of common-subexpression elimination for parameter-free subtrees)."""
    n = len(tree)
    has_param, text = [False] * n, [""] * n
    for idx in range(n - 1, -1, -1):
        node, ks = tree[idx], kids[idx]
        has_param[idx] = idx in edge_param or idx in op_params or any(has_param[k] for k in ks)
        text[idx] = (f"{node.name}({', '.join(text[k] for k in ks)})"
                     if isinstance(node, gp.Primitive) else node.format())
    return has_param, text


def _shared_exponentials(tree, pset, kids, edge_param, op_params, key) -> tuple[dict, dict]:
    """For the fused source: node -> the node whose value is its exp operand u, for every
    tanh(softplus(u)) (always rewritten) and every sigmoid / sigmul / softplus whose u has two
    or more such readers; and each rewritten node's operand key (``key``: a node's canonical
    text, or the node itself where a learnable scalar makes its value unique)."""
    operand: dict = {}
    for idx, node in enumerate(tree):
        if not isinstance(node, gp.Primitive):
            continue
        if not _builtin(pset, node.name):
            continue
        if node.name == "tanh":
            (child,) = kids[idx]
            c = tree[child]
            if (isinstance(c, gp.Primitive) and c.name == "softplus" and _builtin(pset, c.name)
                    and child not in edge_param and child not in op_params):
                operand[idx] = kids[child][0]
        elif node.name in _EXP_FAMILY and idx not in op_params:
            operand[idx] = kids[idx][0]
    readers: dict = {}
    for idx, u in operand.items():
        readers[key[u]] = readers.get(key[u], 0) + 1
    rewrite = {idx: u for idx, u in operand.items()
               if tree[idx].name == "tanh" or readers[key[u]] >= 2}
    return rewrite, {idx: key[u] for idx, u in rewrite.items()}


def _fused_form(name: str, u: str, e: str, operands: list) -> str:
    """The rewritten operator, in u's dtype (exp autocasts to float32 on CUDA)."""
    if name == "tanh":  # tanh(softplus(u))
        form = f"({e} * ({e} + 2.0)) / ({e} * ({e} + 2.0) + 2.0)"
    elif name == "sigmoid":
        form = f"{e} / ({e} + 1.0)"
    elif name == "sigmul":
        return f"({e} / ({e} + 1.0)).to({u}.dtype) * {operands[1]}"
    else:  # softplus
        form = f"torch.where({u} > 20.0, {u}, torch.log1p({e}))"
    return f"({form}).to({u}.dtype)"


def generate(tree, pset, edges=(), function_name: str = "activation",
             fused: bool = False) -> Program:
    """Straight-line source for the tree with learnable multipliers on ``edges``; ``fused``:
    the source torch.compile traces (the exponential family rewritten, module docstring)."""
    slots = param_slots(tree, pset, edges)
    emitter = _Emitter(tree, pset, slots, fused)
    for idx in range(len(tree) - 1, -1, -1):  # children before their parent
        emitter.emit(idx)
    return emitter.program(function_name, ["x", *[s.name for s in slots]])


def _slot_names(slots) -> tuple[dict, dict]:
    """{node: edge multiplier's name} and {node: [its operator's β names]}."""
    edge_param = {s.node: s.name for s in slots if s.kind == "edge"}
    op_params: dict[int, list[str]] = {}
    for s in slots:
        if s.kind == "operator":
            op_params.setdefault(s.node, []).append(s.name)
    return edge_param, op_params


class _Emitter:
    """The statements of one :func:`generate`, and per node its variable, the range of its
    value and whether it depends on x."""

    def __init__(self, tree, pset, slots, fused: bool):
        self.tree, self.pset = tree, pset
        self.edge_param, self.op_params = _slot_names(slots)
        self.kids = children(tree)
        n = len(tree)
        self.var = [""] * n
        self.span = [(0.0, 0.0)] * n  # (lo, hi) of each node's value
        self.depends = [False] * n
        self.has_param, self.text = _canonical(tree, self.kids, self.edge_param, self.op_params)
        self.computed: dict[str, str] = {}  # canonical text -> variable (parameter-free nodes)
        self.lines: list[str] = []
        self.helpers: dict = {}
        self.kernels = 0
        self.rewrite, self.exp_key = {}, {}
        if fused:
            key = [f"#{i}" if self.has_param[i] else self.text[i] for i in range(n)]
            self.rewrite, self.exp_key = _shared_exponentials(tree, pset, self.kids,
                                                              self.edge_param, self.op_params, key)
        self.exps: dict = {}  # exp operand key -> the variable holding exp(min(u, 30))

    def emit(self, idx: int) -> None:
        """Node ``idx``'s statement (none when an equal subtree was computed, or for x)."""
        node = self.tree[idx]
        is_op = isinstance(node, gp.Primitive)
        expr = self.operator(idx, node) if is_op else self.leaf(idx, node)
        if not self.has_param[idx] and self.text[idx] in self.computed:
            self.var[idx] = self.computed[self.text[idx]]
            return
        if idx in self.edge_param:
            p = self.edge_param[idx]
            expr = f"{expr} * {p}" if expr == "x" else f"({expr}) * {p}"
        if expr == "x":
            self.var[idx] = "x"
        else:
            self.var[idx] = f"v{idx}"
            self.lines.append(f"    {self.var[idx]} = {expr}")
            self.kernels += is_op
        if not self.has_param[idx]:
            self.computed[self.text[idx]] = self.var[idx]

    def operator(self, idx: int, node) -> str:
        """An operator node's expression: its fast form where the operands' ranges allow."""
        op = self.pset.operators[node.name]
        ks = self.kids[idx]
        self.depends[idx] = any(self.depends[k] for k in ks)
        operands = [self.span[k] for k in ks]
        fast = op.can_use_fast(operands)
        lo, hi = op.output_interval(operands)
        # the protected form's value is always finite float32
        self.span[idx] = (lo, hi) if fast else (max(lo, -FLOAT32_MAX), min(hi, FLOAT32_MAX))
        expr = op.render([self.var[k] for k in ks], self.op_params.get(idx, ()), fast=fast)
        self.helpers.update(op.helpers)
        if idx in self.rewrite:
            u = self.var[self.rewrite[idx]]
            expr = _fused_form(node.name, u, self.exp_of(idx, u), [self.var[k] for k in ks])
        return expr

    def exp_of(self, idx: int, u: str) -> str:
        """The variable holding exp(min(u, 30)) for node ``idx``, emitted at its first use."""
        e = self.exps.get(self.exp_key[idx])
        if e is None:
            e = self.exps[self.exp_key[idx]] = f"e{idx}"
            self.lines.append(f"    {e} = torch.exp(torch.clamp({u}, max=30.0))")
        return e

    def leaf(self, idx: int, node) -> str:
        value = leaf_value(node, self.pset)
        if value is None:
            self.depends[idx], self.span[idx] = True, (-FLOAT32_MAX, FLOAT32_MAX)
            return "x"
        self.span[idx] = (value, value)
        return f"x.new_full((), {value!r})"

    def program(self, function_name: str, args: list) -> Program:
        result, kernels = self.var[0], self.kernels
        if not self.depends[0]:
            # A tree without x (e.g. a constant) must still return x's shape.
            result = f"torch.zeros_like(x) + {result}"
            kernels += 1
        source = f"def {function_name}({', '.join(args)}):\n" + "\n".join(self.lines)
        source += ("\n" if self.lines else "") + f"    return {result}\n"
        return Program(source, function_name, args, self.helpers, kernels, self.depends[0])
