"""Putting evolved activations into existing networks: :func:`replace_activations`.

A model built without an activation factory (torchvision's, a user's) gets a fresh module per
activation *call*: shared modules are split by tracing the model with ``torch.fx``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Sequence

from torch import nn

from . import zoo
from .activation import Activation
from .errors import UserError


def replace_activations(model: nn.Module, act, types: Sequence[type] = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU),
                        fused: bool = False, share: bool = False) -> nn.Module:
    """Give every activation of ``model`` (a module of ``types``) a fresh instance of ``act``.

    ``act`` is an :class:`Activation` (each site gets its own module and scalars), an expression
    string over ``pangaea``, a zoo name, or any factory returning a module (``nn.ReLU`` itself
    just splits shared activations).  **Use the return value**:

    * every name under which a module of ``types`` is registered (``named_modules`` with
      duplicates) gets its own new module, in place;
    * a module that ``forward`` *calls* at several places -- torchvision's ``BasicBlock`` calls
      ``self.relu`` twice, a loop calls one module per iteration -- is found by tracing
      ``model`` with ``torch.fx``, and every further call gets its own new module, registered
      next to the first as ``<name>_1``, ``<name>_2``, ...: the result is then a
      ``torch.fx.GraphModule`` (named after ``model``'s class) whose forward is ``model``'s
      traced forward.  Its submodules are ``model``'s own (so parameters are shared and its
      ``state_dict`` has ``model``'s keys plus the new modules'); containers on the way to a new
      module are shallow copies, so ``model`` itself keeps its structure.  Methods other than
      ``forward`` and hooks on ``model`` itself are not carried over.  A model that cannot
      be traced (data-dependent control flow, ...) is left with the first step and a warning
      says so;
    * ``share=True``: one new module per distinct old module instead, installed everywhere the
      old one was (registered or called), so sharing stays as it was; nothing is traced.

    Returns the model (``model`` itself when no call had to be split), or the new module when
    ``model`` itself is one of ``types``.

        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=10)      # 9 ReLU modules, 17 calls
        >>> net = replace_activations(net, Activation.from_string("mul(x, sigmoid(x))", params=[3]))
        >>> sum(isinstance(m, ActivationModule) for m in net.modules())
        17
    """
    if isinstance(act, str):
        act = zoo.resolve(act)
    if isinstance(act, Activation):
        make = lambda: act.module(fused=fused)  # noqa: E731
    elif callable(act):
        make = act
    else:
        raise UserError(f"replace_activations: expected an Activation, expression, zoo name or "
                        f"factory, got {type(act).__name__}")
    types = tuple(types)
    if isinstance(model, types):  # the model is itself one activation: nothing to swap inside
        return make()
    # remove_duplicate=False: one module instance registered at several places (a shared
    # nn.ReLU) is several sites, each of which gets its own module (unless share=True).
    targets = [(name, mod) for name, mod in model.named_modules(remove_duplicate=False)
               if isinstance(mod, types)]
    made, new_of = [], {}
    for name, old in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if share and id(old) in new_of:
            new = new_of[id(old)]
        else:
            new = new_of[id(old)] = make()
            made.append(new)
        setattr(parent, child, new)
    if share or not targets:
        return model
    try:
        split = _split_shared_calls(model, {id(m) for m in made}, make)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: keep the first step, say so
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        warnings.warn(f"replace_activations: torch.fx cannot trace {type(model).__name__} "
                      f"({type(exc).__name__}: {reason[:200]}); each registered activation "
                      f"module was replaced once, so a module that forward calls at several "
                      f"places still serves all of them (share=True: replace without tracing)",
                      stacklevel=2)
        return model
    return model if split is None else split


def _split_shared_calls(model: nn.Module, made_ids: set, make):
    """A GraphModule of ``model`` in which every call of a module in ``made_ids`` has its own
    module (``make()`` for the second and later calls), or None when no module is called twice.
    Raises whatever torch.fx raises when ``model`` cannot be traced."""
    import torch.fx

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):  # the new activations stay single calls
            return id(m) in made_ids or super().is_leaf_module(m, qualname)

    graph = _Tracer().trace(model)
    calls: dict[str, list] = {}
    for node in graph.nodes:
        if node.op == "call_module" and id(model.get_submodule(node.target)) in made_ids:
            calls.setdefault(node.target, []).append(node)
    repeated = {target: nodes[1:] for target, nodes in calls.items() if len(nodes) > 1}
    if not repeated:
        return None
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    for name, child in model.named_children():  # model's own submodules, not fx's bare copies
        setattr(gm, name, child)
    gm.train(model.training)
    copies: set[int] = set()
    for target, nodes in repeated.items():
        parent_path, _, leaf = target.rpartition(".")
        parent = gm
        for part in parent_path.split(".") if parent_path else ():  # private copies on the way
            child = parent._modules[part]
            if id(child) not in copies:
                child = copy.copy(child)
                child._modules = child._modules.copy()
                parent._modules[part] = child
                copies.add(id(child))
            parent = child
        k = 1
        for node in nodes:
            while f"{leaf}_{k}" in parent._modules or hasattr(parent, f"{leaf}_{k}"):
                k += 1
            parent.add_module(f"{leaf}_{k}", make())
            node.target = f"{parent_path}.{leaf}_{k}" if parent_path else f"{leaf}_{k}"
    gm.recompile()
    return gm

