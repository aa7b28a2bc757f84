"""Putting evolved activations into existing networks: :func:`replace_activations`.

An activation *site* is every place a network applies a hidden activation: a registered
activation module (``nn.ReLU``, transformers' ``GELUActivation``, timm's ``HardSwish``, ...),
every further call of a module that ``forward`` calls several times, and every functional call
(``F.relu``, ``torch.tanh``, ``x.relu_()``, ...).  The last two are found by tracing the model
with ``torch.fx``.

The part between the ``standalone core`` markers below uses nothing but ``torch``: the torch
export (``Activation.torch_source`` with learned sites) embeds that text, so that the exported
``EvolvedActivation.apply_to`` and :func:`replace_activations` are one implementation.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import zoo
from .activation import Activation
from .errors import UserError

# ---- standalone core begin (torch only: embedded verbatim in exported torch files) -------------
# Hidden activations, and the functional calls that compute them (the call sites), by the
# torch.nn class they belong to.  Sigmoid / Hardsigmoid (and LogSigmoid, Softmax, GLU) are not
# here: in networks they are gates (squeeze-excitation, LSTM-style gating) or outputs, and
# replacing a gate changes what the network computes rather than its nonlinearity.
_ACT_CALLS = (
    ("ReLU", "F.relu F.relu_ torch.relu torch.relu_ Tensor.relu Tensor.relu_"),
    ("ReLU6", "F.relu6"),
    ("LeakyReLU", "F.leaky_relu F.leaky_relu_"),
    ("PReLU", "F.prelu torch.prelu Tensor.prelu"),
    ("RReLU", "F.rrelu F.rrelu_ torch.rrelu torch.rrelu_"),
    ("ELU", "F.elu F.elu_"),
    ("SELU", "F.selu F.selu_ torch.selu torch.selu_"),
    ("CELU", "F.celu F.celu_ torch.celu torch.celu_"),
    ("GELU", "F.gelu"),
    ("SiLU", "F.silu"),
    ("Mish", "F.mish"),
    ("Hardswish", "F.hardswish"),
    ("Hardtanh", "F.hardtanh F.hardtanh_"),
    ("Tanh", "torch.tanh torch.tanh_ F.tanh Tensor.tanh Tensor.tanh_"),
    ("Softplus", "F.softplus"),
    ("Softsign", "F.softsign"),
    ("Tanhshrink", "F.tanhshrink"),
    ("Softshrink", "F.softshrink"),
    ("Hardshrink", "F.hardshrink torch.hardshrink Tensor.hardshrink"),
    ("Threshold", "F.threshold F.threshold_ torch.threshold torch.threshold_"),
)
# Activation classes of other libraries, recognised by defining module and class name (also
# through subclasses), so that nothing is imported: hidden activations, and gates/others that
# are never replaced by default but are not traced into either (their inner calls are theirs).
_ACT_LIBRARY_HIDDEN = {
    "transformers.activations": "GELUActivation GELUTanh PytorchGELUTanh NewGELUActivation "
                                "FastGELUActivation QuickGELUActivation SiLUActivation "
                                "ClippedGELUActivation AccurateGELUActivation MishActivation "
                                "LaplaceActivation ReLUSquaredActivation SqrtSoftplusActivation "
                                "XIELUActivation",
    "timm.layers.activations": "Swish Mish Tanh HardSwish HardMish PReLU GELU GELUTanh QuickGELU",
    "timm.layers.activations_me": "SwishMe MishMe HardSwishMe HardMishMe",
    "timm.layers.activations_jit": "SwishJit MishJit HardSwishJit HardMishJit",
    "timm.models.layers.activations": "Swish Mish Tanh HardSwish HardMish PReLU GELU GELUTanh "
                                      "QuickGELU",
}
_ACT_LIBRARY_OTHER = {
    "timm.layers.activations": "Sigmoid HardSigmoid",
    "timm.layers.activations_me": "HardSigmoidMe",
    "timm.layers.activations_jit": "HardSigmoidJit",
    "timm.models.layers.activations": "Sigmoid HardSigmoid",
    "transformers.activations": "LinearActivation",
    "gp_activations.activation": "ActivationModule",
}


class ActivationSiteError(ValueError):
    """A site cannot be replaced (bad ``types``/``where``, nothing to replace, a graph that
    cannot be rebuilt); the model is left as it was."""


def _act_resolve(spelling):
    """``"F.relu"`` -> (torch.nn.functional.relu, None); ``"Tensor.relu"`` -> (the method,
    "relu"); (None, None) when this torch lacks it."""
    owner, _, attr = spelling.partition(".")
    base = {"F": torch.nn.functional, "torch": torch, "Tensor": torch.Tensor}[owner]
    fn = getattr(base, attr, None)
    return fn, (attr if owner == "Tensor" and fn is not None else None)


def _act_hidden_classes():
    """The torch.nn classes of the default set (those this torch has)."""
    return tuple(c for c in (getattr(torch.nn, name, None) for name, _ in _ACT_CALLS) if c)


def _act_library_match(module, table):
    for klass in type(module).__mro__:
        names = table.get(getattr(klass, "__module__", ""))
        if names and klass.__name__ in names.split():
            return True
    return False


def is_hidden_activation(module):
    """Whether ``module`` is a hidden activation of the default set: a torch.nn one (ReLU,
    ReLU6, LeakyReLU, PReLU, RReLU, ELU, SELU, CELU, GELU, SiLU, Mish, Hardswish, Hardtanh,
    Tanh, Softplus, Softsign, Tanhshrink, Softshrink, Hardshrink, Threshold) or one of
    transformers' / timm's activation layers (by class name; nothing is imported)."""
    return (isinstance(module, _act_hidden_classes())
            or _act_library_match(module, _ACT_LIBRARY_HIDDEN))


def _act_call_table(types):
    """{function: spelling} and {method name: spelling} of the calls that compute an activation
    of ``types`` (None: the default set)."""
    functions, methods = {}, {}
    for cls_name, spellings in _ACT_CALLS:
        cls = getattr(torch.nn, cls_name, None)
        if cls is None or (types is not None and not issubclass(cls, types)):
            continue
        for spelling in spellings.split():
            fn, method = _act_resolve(spelling)
            if method is not None:
                methods.setdefault(method, spelling)
            elif fn is not None:
                functions.setdefault(fn, spelling)
    return functions, methods


def _act_shallow_copy(module):
    """copy.copy of a module (without importing copy) with its own ``_modules`` dict."""
    new = type(module).__new__(type(module))
    new.__setstate__(dict(module.__dict__))
    new._modules = dict(module._modules)
    return new


def _act_class_text(module):
    cls = type(module)
    return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__name__


def _act_sites(model, make, types=None, where=None, calls=True, share=False, dry_run=False,
               also=()):
    """Replace every activation site of ``model``; the one implementation behind
    ``replace_activations`` and the exported ``apply_to``.

    ``make(name)`` builds the module of the site ``name``.  ``types``: the module classes to
    replace (None: the default set, :func:`is_hidden_activation`), plus those of ``also``.
    ``calls``: True replaces functional calls too, False only splits further calls of one
    module, None does not trace at all (registered modules only).  Returns ``(result, sites,
    problem)``: ``result`` is ``model`` (its registered modules replaced in place) or a
    ``torch.fx.GraphModule`` when calls had to become modules; ``sites`` lists ``(name, kind,
    what)`` in the ``named_modules`` order of ``result``; ``problem`` says why ``model`` could
    not be traced (None when it was, or with ``share`` or ``calls=None``).  ``dry_run``: only find the sites (``make``
    is not called), leaving ``model`` as it was.  Any error leaves ``model`` as it was.
    """
    types = _act_checked(types, where)
    also = tuple(also)
    selected, chosen = _act_selector(types, also), _act_chooser(where)
    if dry_run:
        make = lambda name: torch.nn.Identity()  # noqa: E731 - placeholders, rolled back
    sites, undo, done = [], [], False
    try:
        if selected(model):  # the model is itself one activation
            if not chosen("", model):
                raise ActivationSiteError("no activation site to replace: where() rejected "
                                          "the model itself")
            sites.append(("", f"module {_act_class_text(model)}", model))
            done = True
            return (model if dry_run else make("")), sites, None
        made = _act_swap_modules(model, _act_targets(model, selected, chosen), make, share,
                                 sites, undo)
        result, problem = model, None
        if not share and calls is not None:
            functions, methods = _act_call_table(types) if calls else ({}, {})
            leaves = ({id(m) for m in made}, tuple(types or ()) + also)
            result, problem = _act_trace(model, leaves,
                                         (make, functions, methods, chosen, sites, undo))
        if not sites:
            raise ActivationSiteError(
                f"no activation site to replace in {type(model).__name__}"
                + (f" (and it cannot be traced: {problem})" if problem else "")
                + ": it has no module of the chosen types and calls none of their functions")
        _act_sort_sites(sites, result)
        done = not dry_run
        return (model if dry_run else result), sites, problem
    finally:
        if not done:  # an error, or a dry run: model as it was
            for parent, child, old in reversed(undo):
                parent._modules[child] = old


def _act_checked(types, where):
    """``types`` as a tuple (None: the default set); a bad ``types`` or ``where`` raises."""
    if types is not None:
        types = tuple(types)
        bad = [t for t in types if not (isinstance(t, type) and issubclass(t, torch.nn.Module))]
        if bad:
            raise ActivationSiteError(f"types: {bad[0]!r} is not a module class (a subclass of "
                                      f"torch.nn.Module)")
    if where is not None and not callable(where):
        raise ActivationSiteError(f"where must be a function (name, module) -> bool, got "
                                  f"{type(where).__name__}")
    return types


def _act_selector(types, also):
    """selected(module): whether ``module`` is of ``types`` (None: the default set) or ``also``."""

    def selected(module):
        return (isinstance(module, types) if types is not None
                else is_hidden_activation(module)) or isinstance(module, also)

    return selected


def _act_chooser(where):
    """chosen(name, what): the user's ``where`` (None: all), its errors in one line."""

    def chosen(name, what):
        if where is None:
            return True
        try:
            return bool(where(name, what))
        except Exception as exc:  # noqa: BLE001 - the user's predicate: one clear line
            raise ActivationSiteError(f"where({name!r}, {type(what).__name__}) raised "
                                      f"{type(exc).__name__}: {exc}") from exc

    return chosen


def _act_targets(model, selected, chosen):
    """``(name, module)`` of the chosen registered modules (not those inside a selected one)."""
    targets, skip = [], ()
    for name, module in model.named_modules(remove_duplicate=False):
        if name and not name.startswith(skip) and selected(module):
            skip = tuple(set(skip) | {name + "."})  # not the inside of a replaced one
            if chosen(name, module):
                targets.append((name, module))
    return targets


def _act_swap_modules(model, targets, make, share, sites, undo):
    """Put a new module in place of each target (``undo`` records the swaps, ``sites`` gets
    them); ``share``: one per distinct old module.  Returns the new modules."""
    made, new_of = [], {}
    for name, old in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if share and id(old) in new_of:
            new = new_of[id(old)]
        else:
            new = new_of[id(old)] = make(name)
            made.append(new)
        undo.append((parent, child, parent._modules[child]))
        parent._modules[child] = new
        sites.append((name, f"module {_act_class_text(old)}", old))
    return made


def _act_trace(model, leaves, rebuild_args):
    """``model`` traced and rebuilt (:func:`_act_tree`), and why a forward could not be traced
    (None when all could)."""
    problems = []
    result = _act_tree(model, "", leaves, rebuild_args, problems)
    if not problems:
        return result, None
    path, name, reason = problems[0]
    problem = f"{name}{' at ' + path if path else ''} ({reason})"
    if len(problems) > 1:
        problem += (f" and the forward of {len(problems) - 1} more: "
                    + ", ".join(f"{p} ({n})" for p, n, _ in problems[1:6])
                    + (", ..." if len(problems) > 6 else ""))
    return result, problem


def _act_sort_sites(sites, result):
    """``sites`` in the ``named_modules`` order of ``result``."""
    order = {name: i for i, (name, _) in
             enumerate(result.named_modules(remove_duplicate=False))}
    sites.sort(key=lambda site: order.get(site[0], len(order)))


def _act_tracer(leaf_ids, types):
    """A torch.fx tracer for which activation modules (new, known, of ``types``) are leaves."""

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return (id(m) in leaf_ids or is_hidden_activation(m)
                    or _act_library_match(m, _ACT_LIBRARY_OTHER)
                    or isinstance(m, types)
                    or super().is_leaf_module(m, qualname))

    return _Tracer()


def _act_tree(module, path, leaves, rebuild_args, problems):
    """``module`` traced and rebuilt (``_act_rebuild``); when torch.fx cannot trace it, its
    children are, each in its place (``undo`` records the swaps), and ``problems`` gets
    ``(path, class name, reason)``: calls written in its own forward stay unreached."""
    tracer = _act_tracer(*leaves)
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: note it, trace the children
        if type(module).forward is not torch.nn.Module.forward:  # ModuleList & co: no forward
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problems.append((path, type(module).__name__, f"{type(exc).__name__}: {reason[:200]}"))
        undo = rebuild_args[-1]
        for name, child in list(module._modules.items()):
            if child is None or tracer.is_leaf_module(child, name):
                continue
            new = _act_tree(child, f"{path}.{name}" if path else name, leaves, rebuild_args,
                            problems)
            if new is not child:
                undo.append((module, name, child))
                module._modules[name] = new
        return module
    return _act_rebuild(module, graph, leaves[0], *rebuild_args[:-1], prefix=path)


def _act_rebuild(model, graph, made_ids, make, functions, methods, chosen, sites, prefix=""):
    """``model`` itself when every new module is called once and no call is chosen, else a
    GraphModule in which each further call of a new module and each chosen activation call
    has its own new module (``sites`` gets them; ``prefix``: ``model``'s path in the whole)."""
    nodes = list(graph.nodes)
    repeated, call_nodes = _act_scan(model, nodes, made_ids, functions, methods)
    if not repeated and not call_nodes:
        return model
    edit = _ActGraphEdit(model, graph, make, prefix)
    _act_split_repeated(edit, repeated, sites)
    for node, fn, spelling in call_nodes:
        _act_call_to_module(edit, node, fn, spelling, chosen, sites, nodes)
    try:
        graph.lint()
        edit.gm.recompile()
    except Exception as exc:  # noqa: BLE001
        raise _act_rebuild_error(model, exc) from exc
    return edit.gm


def _act_scan(model, nodes, made_ids, functions, methods):
    """The further calls of new modules among ``nodes``, and the activation calls as
    ``(node, function, spelling)``."""
    seen, repeated, call_nodes = set(), [], []
    for node in nodes:
        if node.op == "call_module" and id(model.get_submodule(node.target)) in made_ids:
            if node.target in seen:
                repeated.append(node)
            seen.add(node.target)
        elif node.op == "call_function" and _act_hashable(node.target) in functions:
            call_nodes.append((node, node.target, functions[node.target]))
        elif node.op == "call_method" and node.target in methods:
            call_nodes.append((node, getattr(torch.Tensor, node.target), methods[node.target]))
    return repeated, call_nodes


def _act_rebuild_error(model, exc):
    return ActivationSiteError(f"cannot rebuild the traced graph of {type(model).__name__}: "
                               f"{type(exc).__name__}: {exc}")


def _act_graph_module(model, graph):
    """A GraphModule of ``graph`` with ``model``'s own submodules, parameters and buffers
    (fx copies only what the graph uses)."""
    try:
        gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    except Exception as exc:  # noqa: BLE001
        raise _act_rebuild_error(model, exc) from exc
    gm._modules = dict(model._modules)
    gm._parameters = dict(model._parameters)
    gm._buffers = dict(model._buffers)
    gm._non_persistent_buffers_set = set(model._non_persistent_buffers_set)
    gm.train(model.training)
    return gm


class _ActGraphEdit:
    """New modules installed in the GraphModule of a traced model; ``prefix``: the model's
    path in the whole (site names are full paths)."""

    def __init__(self, model, graph, make, prefix):
        self.gm = _act_graph_module(model, graph)
        self.graph, self.make, self.prefix = graph, make, prefix
        self.copies = set()

    def full(self, name):
        prefix = self.prefix
        return f"{prefix}.{name}" if prefix and name else (prefix or name)

    def private(self, path):
        """The module at ``path`` in gm, containers on the way copied (model keeps its own)."""
        parent = self.gm
        for part in path.split(".") if path else ():
            child = parent._modules[part]
            if id(child) not in self.copies:
                child = _act_shallow_copy(child)
                parent._modules[part] = child
                self.copies.add(id(child))
            parent = child
        return parent

    def free_name(self, path, leaf):
        """``leaf``, or ``leaf_1``, ``leaf_2``, ... whichever is free in the module at ``path``."""
        parent = self.gm.get_submodule(path) if path else self.gm
        k, name = 0, leaf
        while name in parent._modules or hasattr(parent, name):
            k += 1
            name = f"{leaf}_{k}"
        return name

    def install(self, path, leaf):
        """A new module registered as ``leaf`` at ``path``; returns its name in gm."""
        site = f"{path}.{leaf}" if path else leaf
        self.private(path).add_module(leaf, self.make(self.full(site)))
        return site


def _act_split_repeated(edit, repeated, sites):
    """Each further call of a new module gets a new module of its own, next to the first."""
    registered = {name: (kind, what) for name, kind, what in sites}
    for node in repeated:
        path, _, leaf = node.target.rpartition(".")
        site = edit.install(path, edit.free_name(path, leaf))
        kind, old = registered.get(edit.full(node.target), ("module ?", None))
        sites.append((edit.full(site), f"call of {kind} ({edit.full(node.target)})", old))
        node.target = site


def _act_call_to_module(edit, node, fn, spelling, chosen, sites, nodes):
    """A chosen activation call becomes a call of a new module, registered in the module whose
    forward makes it (``nodes``: the graph's nodes before any change)."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    path = path if path and _act_has(edit.gm, path) else ""
    label = spelling.partition(".")[2].rstrip("_")
    leaf = edit.free_name(path, f"{label}_fx")
    site = f"{path}.{leaf}" if path else leaf
    if not chosen(edit.full(site), fn):
        return
    edit.install(path, leaf)
    sites.append((edit.full(site), f"call {spelling}", fn))
    graph = edit.graph
    x = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))
    with graph.inserting_before(node):
        new = graph.call_module(site, (x,))
    node.replace_all_uses_with(new)
    if _act_inplace(node, fn, spelling) and isinstance(x, torch.fx.Node):
        # an in-place call changed x: later uses of x see the activation's output
        after = {n for n in nodes[nodes.index(node) + 1:]}
        x.replace_all_uses_with(new, delete_user_cb=lambda user: user in after)
    graph.erase_node(node)


def _act_hashable(target):
    try:
        hash(target)
        return target
    except TypeError:
        return None


def _act_has(gm, path):
    try:
        gm.get_submodule(path)
        return True
    except AttributeError:
        return False


def _act_inplace(node, fn, spelling):
    if spelling.endswith("_"):
        return True
    if node.kwargs.get("inplace") is True:
        return True
    code = getattr(fn, "__code__", None)
    if code is not None and "inplace" in code.co_varnames[:code.co_argcount]:
        index = code.co_varnames.index("inplace")
        return len(node.args) > index and node.args[index] is True
    return False
# ---- standalone core end ----------------------------------------------------------------------


class ReplacedActivations(list):
    """What :func:`replace_activations` replaced: ``(name, kind)`` pairs, printable.

    ``kind`` is ``"module nn.ReLU"`` (a registered module), ``"call of module layer1.0.relu"``
    (a further call of a module that forward calls several times) or ``"call F.gelu"`` (a
    functional call).  ``.problem``: why tracing failed (None when it did not)."""

    problem: Optional[str] = None

    def names(self) -> list:
        return [name for name, _ in self]

    def counts(self) -> dict:
        """{kind: number of sites}; further calls of a module count together."""
        out: dict = {}
        for _, kind in self:
            kind = kind.split(" (")[0]
            out[kind] = out.get(kind, 0) + 1
        return out

    def __str__(self) -> str:
        head = f"{len(self)} activation sites replaced"
        return "\n".join([head] + [f"  {name or '<model>'}: {kind}" for name, kind in self])


def replace_activations(model: nn.Module, act, types: Optional[Sequence[type]] = None,
                        fused: bool = False, share: bool = False,
                        where: Optional[Callable[[str, object], bool]] = None,
                        calls: bool = True, allow_none: bool = False) -> nn.Module:
    """Give every activation site of ``model`` a fresh instance of ``act``; **use the return
    value**, and read what was replaced in its ``replaced_activations`` attribute.

    ``act`` is an :class:`Activation` (each site gets its own module and scalars), an expression
    string over ``pangaea``, a zoo name, or any factory returning a module (``nn.ReLU`` itself
    just splits shared activations).

    **Which activations.**  By default (``types=None``) the hidden activations: the torch.nn
    modules ReLU, ReLU6, LeakyReLU, PReLU, RReLU, ELU, SELU, CELU, GELU (either
    approximation), SiLU, Mish, Hardswish, Hardtanh, Tanh, Softplus, Softsign, Tanhshrink,
    Softshrink, Hardshrink, Threshold; Hugging Face transformers' activation classes
    (GELUActivation, NewGELUActivation, FastGELUActivation, QuickGELUActivation,
    SiLUActivation, ...) and timm's activation layers (Swish, GELU, HardSwish, Mish, ...),
    recognised by class name so that neither library is imported.  Sigmoid and Hardsigmoid are
    *not* in the set: in networks they are gates (a squeeze-excitation block multiplies by
    ``sigmoid(...)``) or outputs, not hidden nonlinearities, and replacing them would change
    what the network computes.  ``types=(nn.GELU, ...)``: exactly modules of these classes
    (and the functional calls of the torch.nn ones among them or their subclasses: ``nn.GELU``
    also means ``F.gelu``).  ``where(name, what) -> bool`` narrows the choice: ``what`` is the
    module, or for a call the function called (``torch.nn.functional.gelu``,
    ``torch.Tensor.relu``); ``name`` is the site's name (a call's name includes the path of
    the module whose forward makes it, so ``where=lambda n, m: ".se." not in n`` skips every
    call inside squeeze-excitation blocks).

    **Sites.**

    * every name under which a chosen module is registered (``named_modules`` with
      duplicates) gets its own new module, in place;
    * ``model`` is traced with ``torch.fx`` (activation modules are leaves): a chosen module
      that ``forward`` calls at several places -- torchvision's ``BasicBlock`` calls
      ``self.relu`` twice, a loop calls one module per iteration -- gets a new module per
      further call, registered next to the first as ``<name>_1``, ``<name>_2``, ...; every
      functional activation call (``F.relu(x, inplace=True)``, ``F.gelu``, ``torch.tanh``,
      ``x.relu_()``, ``F.leaky_relu``, ...; ``calls=False``: none) becomes a new module
      registered in the module whose forward makes it, named after the function:
      ``<path>.gelu_fx``, ``<path>.gelu_fx_1``, ...  An in-place call's input is the
      activation's output afterwards, as it was.  The result is then a
      ``torch.fx.GraphModule`` (named after ``model``'s class) whose forward is ``model``'s
      traced forward.  Its submodules, parameters and buffers are ``model``'s own (so its
      ``state_dict`` has ``model``'s keys plus the new modules'); containers on the way to a
      new module are shallow copies, so ``model`` itself keeps its structure.  Methods other
      than ``forward`` and hooks on ``model`` itself are not carried over;
    * a model that cannot be traced (data-dependent control flow, ...) keeps the first step,
      and a warning says why and that its calls were not reached;
    * ``share=True``: one new module per distinct old module instead, installed everywhere the
      old one was (registered or called), so sharing stays as it was; nothing is traced, so
      functional calls are not replaced.

    Returns the model (``model`` itself when no call had to become a module), or the new
    module when ``model`` itself is an activation.  Its ``replaced_activations`` attribute is
    a :class:`ReplacedActivations`: the ``(name, kind)`` of each site (``print`` it).

    Errors (:class:`UserError`, ``model`` left as it was): a ``types`` entry that is not a
    module class, a ``where`` that raises, no site at all (``allow_none=True``: then
    ``model`` is returned unchanged), a traced graph that cannot be rebuilt.

        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=10)      # 9 ReLU modules, 17 calls
        >>> net = replace_activations(net, Activation.from_string("mul(x, sigmoid(x))", params=[3]))
        >>> sum(isinstance(m, ActivationModule) for m in net.modules())
        17
    """
    make = _site_factory(act, fused)
    result, sites, problem = _replaced_sites(model, make, types, where, calls, share, allow_none)
    if problem is not None:
        _warn_untraced(problem, len(sites))
    return _with_summary(result, sites, problem)


def _replaced_sites(model, make, types, where, calls, share, allow_none):
    """:func:`_act_sites`' ``(result, sites, problem)``, its errors as one-line UserErrors."""
    try:
        return _act_sites(model, make, types, where, calls=bool(calls), share=share)
    except ActivationSiteError as exc:
        if allow_none and str(exc).startswith("no activation site"):
            return model, [], None
        raise UserError(f"replace_activations: {exc}") from None


def _with_summary(result, sites, problem):
    """``result`` with its ``replaced_activations`` (where the module takes attributes)."""
    summary = ReplacedActivations((name, kind) for name, kind, _ in sites)
    summary.problem = problem
    try:
        result.replaced_activations = summary
    except (AttributeError, TypeError):  # noqa: PERF203 - a module that refuses attributes
        pass
    return result


def _site_factory(act, fused):
    """make(name) -> a new module of ``act`` (an Activation, expression, zoo name or factory)."""
    if isinstance(act, str):
        act = zoo.resolve(act)
    if isinstance(act, Activation):
        return lambda name: act.module(fused=fused)
    if callable(act):
        return lambda name: act()
    raise UserError(f"replace_activations: expected an Activation, expression, zoo name or "
                    f"factory, got {type(act).__name__}")


def _warn_untraced(problem, count):
    """Warn (at replace_activations' caller) that some forward could not be traced."""
    warnings.warn(f"replace_activations: torch.fx cannot trace {problem}; {count} "
                  f"sites were replaced (the registered activation modules, and the calls "
                  f"in the submodules that trace), but a functional activation call or a "
                  f"further call of one module written in such a forward itself is not "
                  f"reached (share=True: replace modules without tracing)", stacklevel=3)
