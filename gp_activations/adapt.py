"""The models people have, as a search's model: building them and saying exactly what to change.

A search's model is a *factory*: each training builds a fresh network.  Two conventions:

* ``model(act[, num_classes])`` -- the factory puts ``act(...)`` at each activation site itself
  (or wraps an existing model: ``lambda act: replace_activations(create(), act)``);
* ``model([num_classes])`` -- a factory without an activation argument (``lambda:
  timm.create_model("resnet10t", num_classes=10)``): the library builds the network and gives
  every hidden activation site the candidate (:func:`~gp_activations.replace.replace_activations`).

Nothing about the network is changed behind the user's back: a classifier head of the wrong
width or inputs of the wrong shape are one-line :class:`~gp_activations.errors.UserError`\\ s
that say what to change (:func:`check_fit`), a factory that never uses its activation one too.
"""

from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
from torch import nn

from .errors import UserError

#: Names by which a factory's parameter is its activation factory even when it has a default.
_ACT_NAMES = ("act", "act_factory", "activation", "act_layer", "make_act")


def factory_signature(model) -> tuple[bool, bool]:
    """``(takes_act, takes_num_classes)`` of a model factory.

    It takes the activation when it has a *required* positional parameter other than
    ``num_classes``, ``*args``, or a parameter named like one (``act``, ``activation``, ...);
    so ``functools.partial(timm.create_model, "resnet10t")`` (only defaults) does not.  A
    callable without a readable signature is called with the activation, as before."""
    try:
        params = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):
        return True, False
    takes_act = False
    for p in params:
        if p.name == "num_classes":
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            takes_act = True
        elif p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            if p.default is inspect.Parameter.empty or p.name in _ACT_NAMES:
                takes_act = True
    takes_nc = any(p.name == "num_classes" and p.kind is not inspect.Parameter.POSITIONAL_ONLY
                   for p in params)
    return takes_act, takes_nc


def _label(model) -> str:
    name = getattr(model, "__name__", None) or type(model).__name__
    return "the model factory" if name == "<lambda>" else f"model factory {name!r}"


def build_user_model(model, act_factory, num_classes: int) -> nn.Module:
    """The network a user's model factory builds for one training (see the module docstring).

    ``act_factory``: a site factory (``models.as_site_factory``): every module it makes is
    tagged as an activation site, which is how a factory that ignores it is recognised."""
    from .models import activation_sites
    from .replace import replace_activations

    if isinstance(model, nn.Module):
        name = type(model).__name__
        raise UserError(f"model is a built {name} (an nn.Module), but each training needs a "
                        f"fresh one: pass a function that builds it, e.g. model=lambda: "
                        f"{name}(...) (its activations are replaced by the library) or "
                        f"model=lambda act: replace_activations({name}(...), act)")
    takes_act, takes_nc = factory_signature(model)
    kwargs = {"num_classes": num_classes} if takes_nc else {}
    net = model(act_factory, **kwargs) if takes_act else model(**kwargs)
    if not isinstance(net, nn.Module):
        raise UserError(f"{_label(model)} returned {type(net).__name__}, not an nn.Module")
    if not takes_act:
        try:
            return replace_activations(net, act_factory)
        except UserError as exc:
            raise UserError(f"{_label(model)} builds a network whose activations cannot be "
                            f"replaced: {exc}") from None
    if not activation_sites(net):
        raise UserError(
            f"{_label(model)} ignores its activation argument (the network has no activation "
            f"site), so every candidate would train the same network: call act() at each "
            f"site, or wrap the model: model=lambda act: replace_activations(<build it>, act) "
            f"(or drop the argument: model=lambda: <build it>)")
    return net


# ---------------------------------------------------------------------------------------------
# Does the network fit the data?  One forward pass, and exactly what to change when not
# ---------------------------------------------------------------------------------------------
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _first_layer(net: nn.Module, x: torch.Tensor):
    """``(exception or None, output, (name, module) of the first Conv/Linear the input
    reached)`` of one eval-mode forward of ``x`` without gradient."""
    names = {id(m): n for n, m in net.named_modules()}
    reached: list = []

    def pre_hook(module, _inputs):
        if not reached:
            reached.append((names.get(id(module), "?"), module))

    handles = [m.register_forward_pre_hook(pre_hook) for m in net.modules()
               if isinstance(m, _CONVS + (nn.Linear,))]
    was_training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(x)
        return None, out, (reached[0] if reached else None)
    except Exception as exc:  # noqa: BLE001 -- a shape mismatch, diagnosed below
        return exc, None, (reached[0] if reached else None)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()


def _shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _input_fix(name: str, layer: nn.Module, sample: tuple) -> Optional[str]:
    """What to change when ``sample``-shaped inputs (no batch dimension) do not fit the first
    layer ``layer`` (None when they do, or when nothing specific can be said)."""
    where = f"its first layer {name} ({type(layer).__name__})"
    if isinstance(layer, _CONVS):
        k = len(layer.kernel_size)
        c = layer.in_channels
        dims = ", ".join(["-1"] * k)
        if len(sample) == k:  # (H, W): no channel dimension
            fix = ("x.unsqueeze(1)" if c == 1 else
                   f"x.unsqueeze(1).expand(-1, {c}, {dims}) (the one channel repeated), or "
                   f"x.unsqueeze(1) and a model built for 1 input channel (timm: "
                   f"create_model(..., in_chans=1); torchvision: replace its first convolution)")
            return (f"the inputs have shape {_shape(sample)}, no channel dimension, but "
                    f"{where} takes {c} channels: give {fix}")
        if len(sample) == k + 1 and sample[0] != c:
            if sample[-1] == c:
                order = ", ".join(["0", str(k + 1)] + [str(i) for i in range(1, k + 1)])
                return (f"the inputs are channels-last, shape {_shape(sample)}, but {where} "
                        f"takes channels first: give x.permute({order})")
            fix = (f"build the model for {sample[0]} input channel{'s' * (sample[0] != 1)} "
                   f"(timm: create_model(..., in_chans={sample[0]}); torchvision: replace its "
                   f"first convolution)")
            if sample[0] == 1:
                fix += f", or give {c} channels: x.expand(-1, {c}, {dims})"
            return (f"the inputs have {sample[0]} channel{'s' * (sample[0] != 1)} (shape "
                    f"{_shape(sample)}) but {where} takes {c}: {fix}")
        return None
    if isinstance(layer, nn.Linear) and sample and sample[-1] != layer.in_features:
        fix = (": flatten them (x.flatten(1), or nn.Flatten() first in the model)"
               if math.prod(sample) == layer.in_features else "")
        return (f"the inputs have shape {_shape(sample)} but {where} takes "
                f"{layer.in_features} features{fix}")
    return None


def _output_fix(out, num_classes: int, batch: int, signature) -> Optional[str]:
    """What to change when ``out`` is not ``(batch, num_classes)`` logits (None when it is)."""
    if not isinstance(out, torch.Tensor):
        logits = getattr(out, "logits", None)
        hint = (" (it has .logits: return those)" if isinstance(logits, torch.Tensor)
                else " (its first element?)" if isinstance(out, (tuple, list)) else "")
        return (f"the model returns a {type(out).__name__}, not a tensor of logits "
                f"(N, {num_classes}){hint}: make forward return the logits")
    if out.dim() != 2 or out.shape[0] != batch:
        return (f"the model outputs shape {_shape(out.shape)} for a batch of {batch}; a "
                f"classifier must output logits of shape ({batch}, {num_classes}) (pool and "
                f"flatten before its last layer)")
    if out.shape[1] != num_classes:
        width = out.shape[1]
        takes_act, takes_nc = signature or (None, None)
        if takes_nc:
            return (f"the model outputs {width} logits but the data has {num_classes} classes, "
                    f"although the factory takes num_classes={num_classes}: pass it on to the "
                    f"model (timm: create_model(..., num_classes=num_classes))")
        return (f"the model outputs {width} logits but the data has {num_classes} classes: "
                f"build it with num_classes={num_classes} (timm: create_model(..., "
                f"num_classes={num_classes}); torchvision: resnet18(num_classes={num_classes}))"
                + (f" or let the factory take num_classes (model=lambda "
                    f"{'act, ' if takes_act else ''}num_classes: ...)" if takes_nc is False
                    else ""))
    return None


def check_fit(net: nn.Module, x: torch.Tensor, num_classes: int, model=None) -> Optional[str]:
    """Why ``net`` does not fit inputs like ``x`` (a small batch) and ``num_classes`` classes,
    as one line saying what to change; None when it fits.  ``model``: the factory (for hints
    about its ``num_classes`` argument); a registered name gets none."""
    exc, out, first = _first_layer(net, x)
    if exc is not None:
        fix = _input_fix(*first, tuple(x.shape[1:])) if first is not None else None
        if fix is None:
            fix = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return fix
    signature = factory_signature(model) if callable(model) else None
    return _output_fix(out, num_classes, len(x), signature)
