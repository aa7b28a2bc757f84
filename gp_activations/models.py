"""Networks built from an *activation factory*.

Every network here takes ``act_factory`` and calls it (through :func:`call_factory`) once
per activation site, so each site owns a fresh module -- a parametric activation can
therefore carry its own learnable parameters per layer or per channel.  The factory is
called as ``factory(num_channels=C)`` when it accepts that keyword (or ``**kwargs``), with
``C`` the channel count of the tensor the activation acts on (for a ``Linear`` output, its
feature count); otherwise as ``factory()``.  Plain classes (``nn.ReLU``, ``nn.GELU``),
lambdas and functools.partial objects all work.  :func:`activation_sites` lists the
modules created that way, in forward order.

Parameter counts below are with a parameter-free activation (``nn.ReLU``); they are
checked in ``tests/test_models.py``.

name              input         sites  params C10  params C100  source
----------------  ------------  -----  ----------  -----------  ----------------------------------
``cnn1d``         (N,1,40)          3       5,210       16,550  Greydanus 2020 (MNIST-1D ConvBase)
``resnet1d``      (N,1,40)          7      21,546       24,516  ours: BN ResNet-1D, 3 blocks × 32
``mlp``           (N,1,40)          2      78,858      101,988  ours: MLP 40-256-256, no norm
``cnn_digits``    (N,1,8,8)         3      85,066       90,916  ours, scikit-learn 8x8 digits
``allcnnc``       (N,3,32,32)       9   1,369,738    1,387,108  Springenberg et al. 2015
                                                                (arXiv 1412.6806), DeepOBS
``wrn10_4``       (N,3,32,32)       7   1,198,810    1,221,940  Zagoruyko & Komodakis 2016
``resnet20``      (N,3,32,32)      19     269,722      275,572  He et al. 2016a, option A
``resnet56_v1``   (N,3,32,32)      55     853,018      858,868  He et al. 2016a, option A
``resnet56_v2``   (N,3,32,32)      55   1,663,338    1,686,468  He et al. 2016b, *bottleneck*
                                                                units as in the Keras example
``mobilenetv2``   (N,3,32,32)      35   2,236,682    2,351,972  Sandler et al. 2018, CIFAR variant

Design notes
------------
* No operation here modifies an activation's output in place (residual additions are
  out of place), so activations may be arbitrary autograd functions.
* All models work with ``channels_last`` memory format and under ``torch.autocast``.
* Normalisation layers start at weight 1, bias 0.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gp_activations.errors import UserError

__all__ = [
    "ActivationFactory",
    "ModelInfo",
    "MODELS",
    "SITE_ATTR",
    "CHANNELS_ATTR",
    "activation_sites",
    "as_site_factory",
    "build_model",
    "call_factory",
    "count_parameters",
    "model_names",
    "cnn1d",
    "resnet1d",
    "mlp",
    "cnn_digits",
    "allcnnc",
    "wrn10_4",
    "resnet20",
    "resnet56_v1",
    "resnet56_v2",
    "mobilenetv2",
    "CNN1D",
    "DigitsCNN",
    "AllCNNC",
    "WideResNet",
    "ResNetV1",
    "ResNetV2Bottleneck",
    "MobileNetV2",
]

#: Attribute set to ``True`` on every module created by :func:`call_factory`.
SITE_ATTR = "_gp_activation_site"
#: Attribute holding the ``num_channels`` a site was built for.
CHANNELS_ATTR = "_gp_num_channels"


# ----------------------------------------------------------------------------------------
# Activation factories
# ----------------------------------------------------------------------------------------


def _accepts_num_channels(factory: Callable[..., Any]) -> bool:
    """True when ``factory`` can be called with a ``num_channels`` keyword."""
    if isinstance(factory, type) and issubclass(factory, nn.Module) and \
            factory.__init__ is nn.Module.__init__:
        return False  # a module class without its own __init__: nn.Module's (*args, **kwargs)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature
        return False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if p.name == "num_channels" and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            return True
    return False


class _CallableActivation(nn.Module):
    """Wraps a plain callable (e.g. ``torch.tanh``) a factory returned into a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class ActivationFactory:
    """A user factory with its signature inspected once.

    Calling it with a channel count returns a fresh, tagged activation module.
    """

    def __init__(self, factory: Callable[..., Any]):
        if not callable(factory):
            raise UserError(f"activation factory {factory!r} is not callable")
        self.factory = factory
        self.takes_channels = _accepts_num_channels(factory)

    def __call__(self, num_channels: Optional[int] = None) -> nn.Module:
        """A fresh module for one site.  ``num_channels`` may be omitted (a user's model that
        calls ``act()``); the wrapped factory then gets no channel count either."""
        num_channels = None if num_channels is None else int(num_channels)
        if self.takes_channels and num_channels is not None:
            module = self.factory(num_channels=num_channels)
        else:
            module = self.factory()
        if not isinstance(module, nn.Module):
            if not callable(module):
                raise UserError(
                    f"activation factory {self.factory!r} returned {type(module).__name__}, "
                    "which is neither an nn.Module nor callable"
                )
            module = _CallableActivation(module)
        elif getattr(module, SITE_ATTR, False):
            # The factory handed back a module that already serves another site: give this
            # site its own copy so that no parameters are shared between sites.
            module = copy.deepcopy(module)
        setattr(module, SITE_ATTR, True)
        setattr(module, CHANNELS_ATTR, num_channels)
        return module

    def __repr__(self) -> str:
        return f"ActivationFactory({self.factory!r})"


def as_site_factory(factory: Callable[..., Any]) -> ActivationFactory:
    """Wrap ``factory`` (inspecting its signature once); an ActivationFactory passes through."""
    if isinstance(factory, ActivationFactory):
        return factory
    return ActivationFactory(factory)


def call_factory(factory: Callable[..., Any], num_channels: int) -> nn.Module:
    """Build one activation module for a tensor with ``num_channels`` channels.

    Calls ``factory(num_channels=num_channels)`` when the factory accepts that keyword (or
    ``**kwargs``), else ``factory()``.  The result is tagged as an activation site (see
    :func:`activation_sites`).  A non-module callable result is wrapped in a module; a
    module that already serves another site is deep-copied so sites never share state.
    """
    return as_site_factory(factory)(num_channels)


def activation_sites(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified_name, module)`` of every activation made by :func:`call_factory`.

    The list is in forward order (every model here registers its submodules in the order
    the forward pass uses them).  Modules nested inside a site are not listed separately.
    """
    sites: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if inside and any(name.startswith(p + ".") for p in inside):
            continue
        if getattr(module, SITE_ATTR, False):
            sites.append((name, module))
            inside.append(name)
    return sites


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------
# Small models: MNIST-1D and scikit-learn digits
# ----------------------------------------------------------------------------------------


class CNN1D(nn.Module):
    """Greydanus' (2020) MNIST-1D CNN (``ConvBase``); 5,210 parameters for 10 classes.

    conv1d 1→25 k5 s2 p1, act, conv1d 25→25 k3 s2 p1, act, conv1d 25→25 k3 s2 p1, act,
    flatten (25×5 for length 40), linear → classes.  No normalisation, so the activation
    choice matters.  PyTorch default initialisation, as in the original.  Accepts
    (N, C, L) or (N, L) input (the latter when ``in_channels`` is 1).
    """

    def __init__(self, act_factory, num_classes: int = 10, in_channels: int = 1,
                 channels: int = 25, length: int = 40):
        super().__init__()
        make = as_site_factory(act_factory)
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c_in, n = in_channels, length
        for k in (5, 3, 3):
            layers += [nn.Conv1d(c_in, channels, k, stride=2, padding=1), make(channels)]
            c_in = channels
            n = (n + 2 - k) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(channels * n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.linear(self.flatten(self.features(x)))


class _BasicBlock1d(nn.Module):
    """conv3-BN-act-conv3-BN plus the identity (or a strided 1x1 conv + BN), then act."""

    def __init__(self, make, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.act1 = make(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm1d(c_out))
        self.act2 = make(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNet1D(nn.Module):
    """A BatchNorm residual 1-D network for MNIST-1D; 21,546 parameters for 10 classes.

    stem conv1d 1→32 k5 p2 (no bias), BN, act; three basic blocks of 32 channels (strides 1,
    2, 2: length 40 → 40 → 20 → 10), each conv3-BN-act-conv3-BN + shortcut, act; global
    average pooling; linear → classes.  7 activation sites.  Kaiming-normal convolutions,
    BN weight 1 / bias 0 -- the normalised residual kind of network the paper's CIFAR models
    are, at a size that trains 15 epochs in seconds on one CPU core.
    """

    def __init__(self, act_factory, num_classes: int = 10, in_channels: int = 1,
                 channels: int = 32, blocks: int = 3):
        super().__init__()
        make = as_site_factory(act_factory)
        self.stem = nn.Sequential(nn.Conv1d(in_channels, channels, 5, padding=2, bias=False),
                                  nn.BatchNorm1d(channels), make(channels))
        self.blocks = nn.Sequential(*[_BasicBlock1d(make, channels, channels, 1 if i == 0 else 2)
                                      for i in range(blocks)])
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.linear = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.linear(self.pool(self.blocks(self.stem(x))).flatten(1))


class MLP(nn.Module):
    """An unnormalised MLP for MNIST-1D: 40→256→256→classes; 78,858 parameters for 10 classes.

    Two activation sites, PyTorch default initialisation, no normalisation: the activation's
    shape matters as in ``cnn1d``, without convolutions.
    """

    def __init__(self, act_factory, num_classes: int = 10, in_channels: int = 1,
                 length: int = 40, hidden: int = 256):
        super().__init__()
        make = as_site_factory(act_factory)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * length, hidden),
                                 make(hidden), nn.Linear(hidden, hidden), make(hidden),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """Small 2-D CNN for scikit-learn's 8×8 digits; 85,066 parameters for 10 classes.

    conv3x3 1→32 p1, act, conv3x3 32→64 p1, act, maxpool 2 (→4×4), flatten (1024),
    linear 1024→64, act, linear 64→classes.  PyTorch default initialisation.  Accepts
    (N, 1, 8, 8) or flat (N, 64) input.
    """

    def __init__(self, act_factory, num_classes: int = 10, in_channels: int = 1,
                 hidden: int = 64):
        super().__init__()
        make = as_site_factory(act_factory)
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), make(32),
            nn.Conv2d(32, 64, 3, padding=1), make(64),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, hidden), make(hidden),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(x.shape[0], self.in_channels, 8, 8)
        return self.classifier(self.flatten(self.features(x)))


# ----------------------------------------------------------------------------------------
# All-CNN-C
# ----------------------------------------------------------------------------------------


class AllCNNC(nn.Module):
    """All-CNN-C (Springenberg et al. 2015, arXiv 1412.6806) as defined by DeepOBS.

    dropout 0.2 → conv3x3 96 → conv3x3 96 → conv3x3 96 s2 → dropout 0.5 → conv3x3 192 →
    conv3x3 192 → conv3x3 192 s2 → dropout 0.5 → conv3x3 192 valid (8→6) → conv1x1 192 →
    conv1x1 C → global average.  Every conv has a bias and an activation (the last 1×1 conv
    too, as in DeepOBS): 9 sites, no batch norm.  1,369,738 parameters (C=10), 1,387,108
    (C=100).  Initialisation as DeepOBS: Xavier-normal weights, biases 0.1.  Stride-2 convs
    use symmetric padding 1 (TensorFlow's 'same' pads bottom/right only; same shapes).
    """

    def __init__(self, act_factory, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        make = as_site_factory(act_factory)

        def conv(cin, cout, k, stride=1, padding=1):
            return [nn.Conv2d(cin, cout, k, stride=stride, padding=padding), make(cout)]

        self.features = nn.Sequential(
            nn.Dropout(0.2),
            *conv(in_channels, 96, 3),
            *conv(96, 96, 3),
            *conv(96, 96, 3, stride=2),
            nn.Dropout(0.5),
            *conv(96, 192, 3),
            *conv(192, 192, 3),
            *conv(192, 192, 3, stride=2),
            nn.Dropout(0.5),
            *conv(192, 192, 3, padding=0),
            *conv(192, 192, 1, padding=0),
            *conv(192, num_classes, 1, padding=0),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.constant_(m.bias, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.features(x)))


# ----------------------------------------------------------------------------------------
# Shared initialisation
# ----------------------------------------------------------------------------------------


def _init_bn_net(model: nn.Module, conv_mode: str = "fan_out") -> None:
    """Kaiming-normal convs (bias 0), BN weight 1 / bias 0; Linear keeps PyTorch defaults."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------
# Wide ResNet (pre-activation)
# ----------------------------------------------------------------------------------------


class _WideBlock(nn.Module):
    """o1 = act(BN(x)); z = conv(act(BN(conv(o1, s)))); out = z + (conv1x1(o1) or x)."""

    def __init__(self, make: ActivationFactory, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = make(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = make(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.project = stride != 1 or cin != cout
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if self.project else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.act1(self.bn1(x))
        z = self.conv2(self.act2(self.bn2(self.conv1(o1))))
        return z + self.shortcut(o1 if self.project else x)


class WideResNet(nn.Module):
    """Pre-activation Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016), depth = 6n+4.

    conv3x3 3→16; three groups of n blocks (widths 16k/32k/64k, strides 1/2/2); act(BN);
    global average; linear.  Sites: 2 per block + 1.  WRN-10-4: 7 sites, 1,198,810
    parameters (C=10), 1,221,940 (C=100).
    """

    def __init__(self, act_factory, depth: int = 10, widen: int = 4, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise UserError(f"Wide ResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        make = as_site_factory(act_factory)
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        cin = 16
        for width, stride in zip(widths, (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(make, cin, width, stride if i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.act = make(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        _init_bn_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.blocks(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


# ----------------------------------------------------------------------------------------
# ResNet v1 for CIFAR (option-A shortcuts)
# ----------------------------------------------------------------------------------------


class _ShortcutA(nn.Module):
    """Parameter-free "option A" shortcut: subsample x[:, :, ::s, ::s] and zero-pad channels."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = cout - cin
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, self.pad)


class _BasicBlockV1(nn.Module):
    """conv-BN-act-conv-BN, add the shortcut, act after the add."""

    def __init__(self, make: ActivationFactory, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = make(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (_ShortcutA(cin, cout, stride) if stride != 1 or cin != cout
                         else nn.Identity())
        self.act2 = make(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


class ResNetV1(nn.Module):
    """CIFAR ResNet v1 (He et al. 2016a), depth = 6n+2, option-A (zero-pad) shortcuts.

    conv3x3 16, BN, act; three stages of n basic blocks (16/32/64, strides 1/2/2); global
    average; linear.  Sites: 2 per block + 1.  ResNet-20: 19 sites, 269,722 parameters
    (C=10); ResNet-56: 55 sites, 853,018 parameters (C=10).
    """

    def __init__(self, act_factory, depth: int = 56, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise UserError(f"ResNet v1 depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        make = as_site_factory(act_factory)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            make(16),
        )
        blocks: list[nn.Module] = []
        cin = 16
        for width, stride in zip((16, 32, 64), (1, 2, 2)):
            for i in range(n):
                blocks.append(_BasicBlockV1(make, cin, width, stride if i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        _init_bn_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(self.flatten(self.pool(x)))


# ----------------------------------------------------------------------------------------
# ResNet v2 (pre-activation bottleneck, Keras cifar10_resnet example)
# ----------------------------------------------------------------------------------------


class _BottleneckV2(nn.Module):
    """[BN-act]-conv1x1(s) → BN-act-conv3x3 → BN-act-conv1x1; plus (conv1x1(s) x | x)."""

    def __init__(self, make: ActivationFactory, cin: int, inner: int, cout: int,
                 stride: int, pre_activate: bool, project: bool):
        super().__init__()
        if pre_activate:
            self.pre = nn.Sequential(nn.BatchNorm2d(cin), make(cin))
        else:
            self.pre = nn.Identity()
        self.conv1 = nn.Conv2d(cin, inner, 1, stride=stride)
        self.bn2 = nn.BatchNorm2d(inner)
        self.act2 = make(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(inner)
        self.act3 = make(inner)
        self.conv3 = nn.Conv2d(inner, cout, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.pre(x))
        y = self.conv2(self.act2(self.bn2(y)))
        y = self.conv3(self.act3(self.bn3(y)))
        return y + self.shortcut(x)


class ResNetV2Bottleneck(nn.Module):
    """Pre-activation ResNet v2 (He et al. 2016b) with bottleneck units, as in the Keras
    ``cifar10_resnet.py`` example (``resnet_v2``); depth = 9n+2 (56 → n=6).

    This is the *bottleneck* variant (not the 0.85 M pre-activation basic-block net).
    Stem conv3x3 16 + BN + act; three stages of n units with inner widths 16/64/128 and
    outputs 64/128/256 (strides 1/2/2); each conv is preceded by BN-act except the first
    conv of the very first unit (its input is already activated by the stem); the first
    unit of each stage has a 1×1 projection shortcut on the raw input; no activation after
    the add; final BN-act, global average, linear.  Convs have biases (Keras default).
    Initialisation as Keras: He-normal (fan-in) weights, zero biases.  ResNet-56-v2:
    55 sites (1 + 3·18 − 1 + 1), 1,663,338 parameters (C=10).
    """

    def __init__(self, act_factory, depth: int = 56, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 9:
            raise UserError(f"ResNet v2 depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        make = as_site_factory(act_factory)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            make(16),
        )
        units: list[nn.Module] = []
        inner, cin = 16, 16
        for stage in range(3):
            cout = inner * 4 if stage == 0 else inner * 2
            for i in range(n):
                first = i == 0
                units.append(_BottleneckV2(
                    make, cin, inner, cout,
                    stride=2 if (first and stage > 0) else 1,
                    pre_activate=not (first and stage == 0),
                    project=first,
                ))
                cin = cout
            inner = cout
        self.blocks = nn.Sequential(*units)
        self.bn = nn.BatchNorm2d(cin)
        self.act = make(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        _init_bn_net(self, conv_mode="fan_in")
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_in", nonlinearity="linear")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.blocks(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


# ----------------------------------------------------------------------------------------
# MobileNetV2 (CIFAR variant)
# ----------------------------------------------------------------------------------------


class _InvertedResidual(nn.Module):
    """[conv1x1 expand-BN-act] → depthwise conv3x3(s)-BN-act → conv1x1 project-BN (linear)."""

    def __init__(self, make: ActivationFactory, cin: int, cout: int, stride: int,
                 expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       make(hidden)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            make(hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem and stride 1 in the
    (6, 24, 2, ·) stage; activations wherever ReLU6 was (stem, every expansion 1×1, every
    depthwise 3×3, final 1×1), none after the projection 1×1; residual only when stride 1
    and in == out; global average, dropout 0.2, linear.  35 sites, 2,236,682 parameters
    (C=10), 2,351,972 (C=100).  Initialisation as torchvision.
    """

    # (expansion t, channels c, repeats n, stride s)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, act_factory, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.2):
        super().__init__()
        make = as_site_factory(act_factory)
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
                          nn.BatchNorm2d(32), make(32)),
        ]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(make, cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False),
                                    nn.BatchNorm2d(1280), make(1280)))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1280, num_classes)
        _init_bn_net(self)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.fc(self.dropout(x))


# ----------------------------------------------------------------------------------------
# Builders and registry
# ----------------------------------------------------------------------------------------


def cnn1d(act_factory, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Greydanus' MNIST-1D CNN (input (N, 1, 40)); 3 sites, 5,210 parameters."""
    return CNN1D(act_factory, num_classes=num_classes, in_channels=in_channels)


def resnet1d(act_factory, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """BatchNorm ResNet-1D for MNIST-1D (input (N, 1, 40)); 7 sites, 21,546 parameters."""
    return ResNet1D(act_factory, num_classes=num_classes, in_channels=in_channels)


def mlp(act_factory, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Unnormalised MLP 40→256→256 for MNIST-1D; 2 sites, 78,858 parameters."""
    return MLP(act_factory, num_classes=num_classes, in_channels=in_channels)


def cnn_digits(act_factory, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Small CNN for 8×8 digits (input (N, 1, 8, 8)); 3 sites, 85,066 parameters."""
    return DigitsCNN(act_factory, num_classes=num_classes, in_channels=in_channels)


def allcnnc(act_factory, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """All-CNN-C (DeepOBS); 9 sites, 1,369,738 parameters (C10)."""
    return AllCNNC(act_factory, num_classes=num_classes, in_channels=in_channels)


def wrn10_4(act_factory, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Pre-activation WRN-10-4; 7 sites, 1,198,810 parameters (C10)."""
    return WideResNet(act_factory, depth=10, widen=4, num_classes=num_classes,
                      in_channels=in_channels)


def resnet20(act_factory, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20 v1, option A; 19 sites, 269,722 parameters (C10)."""
    return ResNetV1(act_factory, depth=20, num_classes=num_classes, in_channels=in_channels)


def resnet56_v1(act_factory, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-56 v1, option A; 55 sites, 853,018 parameters (C10)."""
    return ResNetV1(act_factory, depth=56, num_classes=num_classes, in_channels=in_channels)


def resnet56_v2(act_factory, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-56 v2, pre-activation *bottleneck* (Keras example); 55 sites, 1,663,338 (C10)."""
    return ResNetV2Bottleneck(act_factory, depth=56, num_classes=num_classes,
                              in_channels=in_channels)


def mobilenetv2(act_factory, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """MobileNetV2, CIFAR variant; 35 sites, 2,236,682 parameters (C10)."""
    return MobileNetV2(act_factory, num_classes=num_classes, in_channels=in_channels)


_INPUT_SHAPES = {"1d": (1, 40), "digits": (1, 8, 8), "image": (3, 32, 32)}


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry: ``builder(act_factory, num_classes=..., in_channels=...)``."""

    builder: Callable[..., nn.Module]
    input_kind: str  # "1d", "digits" or "image"
    description: str

    @property
    def default_in_channels(self) -> int:
        return _INPUT_SHAPES[self.input_kind][0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Default per-sample input shape (channels first)."""
        return _INPUT_SHAPES[self.input_kind]


MODELS: dict[str, ModelInfo] = {
    "cnn1d": ModelInfo(cnn1d, "1d", "Greydanus' 3-layer 1-D CNN for MNIST-1D (5.2 k params)"),
    "resnet1d": ModelInfo(resnet1d, "1d", "BatchNorm ResNet-1D, 3 residual blocks of 32 channels, "
                          "for MNIST-1D (21.5 k params)"),
    "mlp": ModelInfo(mlp, "1d", "unnormalised MLP 40-256-256 for MNIST-1D (78.9 k params)"),
    "cnn_digits": ModelInfo(cnn_digits, "digits",
                            "small 2-D CNN for 8x8 scikit-learn digits (85 k params)"),
    "allcnnc": ModelInfo(allcnnc, "image", "All-CNN-C, DeepOBS definition, no BN (1.37 M)"),
    "wrn10_4": ModelInfo(wrn10_4, "image", "pre-activation Wide ResNet 10-4 (1.20 M)"),
    "resnet20": ModelInfo(resnet20, "image", "CIFAR ResNet-20 v1, option-A shortcuts (0.27 M)"),
    "resnet56_v1": ModelInfo(resnet56_v1, "image",
                             "CIFAR ResNet-56 v1, option-A shortcuts (0.85 M)"),
    "resnet56_v2": ModelInfo(resnet56_v2, "image",
                             "ResNet-56 v2, pre-activation bottleneck, Keras example (1.66 M)"),
    "mobilenetv2": ModelInfo(mobilenetv2, "image", "MobileNetV2, CIFAR variant (2.24 M)"),
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`, in registry order."""
    return list(MODELS)


def build_model(name: str, act_factory, num_classes: int = 10,
                in_channels: int | None = None) -> nn.Module:
    """Build registered model ``name`` with one activation module per site.

    ``in_channels`` defaults per model (1 for ``cnn1d`` / ``cnn_digits``, 3 for images).
    Raises :class:`UserError` for an unknown name.
    """
    info = MODELS.get(name)
    if info is None:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    if in_channels is None:
        in_channels = info.default_in_channels
    return info.builder(act_factory, num_classes=num_classes, in_channels=in_channels)
