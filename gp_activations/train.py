"""Brief (and full) training of a network with a given activation: the fitness function.

Readable top to bottom, in the spirit of airbench: the whole dataset lives on the device,
batches are index slices of a shuffled permutation, augmentation runs on whole batches on the
device, and there is no DataLoader in the hot loop.  On CUDA the network runs under bf16
autocast in channels_last; on the CPU with an explicit thread count (channels_last for image
models, where it measured 2x faster on ResNet-20 steps, plus bf16 autocast on CPUs with native
bf16 support, another 1.7x).

:func:`train` never raises for a bad *candidate*: a non-finite loss ends the run as
``diverged``, accuracy at chance after the first epoch as ``chance``, the time limit as
``timeout``, an exception inside the activation as ``failed`` -- each with a reason.  Bad
*input* (unknown dataset, impossible budget, ``cuda`` without a GPU) raises
:class:`~gp_activations.errors.UserError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import adapt as adapt_mod
from . import data as data_mod
from . import fusion as fusion_mod
from . import models as models_mod
from . import zoo
from .activation import Activation, ActivationModule
from .compiled import COMPILED, CompileClock
from .errors import UserError, did_you_mean, unknown_keys

# ---------------------------------------------------------------------------------------------
# Configuration and presets
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines one training run except the activation, data and seed."""

    epochs: float = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (momentum, Nesterov) or "adam"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup: float = 0.05  # fraction of all steps spent warming the learning rate up linearly
    schedule: str = "cosine"  # decay after warm-up: "cosine", "linear" or "constant"
    label_smoothing: float = 0.0
    eval_batch_size: int = 1000
    # After every epoch but the last, score only the split's first monitor_samples samples (the
    # progress and the first epoch's chance check read them): a 20,000-sample split then costs
    # one full pass per training.  The last epoch -- and any early end -- score it all (so
    # ``accuracy`` is the whole split's; ``accuracy_curve`` and ``best_accuracy`` mix the
    # subset's earlier scores with it).  None: the whole split every epoch.
    monitor_samples: Optional[int] = None
    time_limit: Optional[float] = None  # seconds; the run stops as "timeout"
    threads: Optional[int] = None  # CPU threads (None: leave torch's setting)
    channels_last: Optional[bool] = None  # None: on for image models
    amp: Optional[bool] = None  # bf16 autocast; None: CUDA, or image models on bf16-capable CPUs
    per_channel: bool = False  # learnable scalars per channel instead of per layer
    # torch.compile the activation functions: True, False, or "auto" -- fuse a candidate when
    # the cost model predicts that it saves more than it costs to compile (fusion.decide)
    fused: Union[bool, str] = "auto"
    chance_check: bool = True  # stop after epoch 1 when accuracy is at chance
    # End the run as "diverged" before its first step when, on one training batch at
    # initialisation, an activation site's output RMS exceeds this (x³, eˣ through a residual
    # stack reach 1e4-1e33 where ReLU stays near 1) or is not finite.  None: no check.
    blowup_limit: Optional[float] = None
    max_steps_per_epoch: Optional[int] = None  # for benchmarks: a slice of each epoch
    preset: str = ""  # which preset the values started from (default_config); recorded in runs

    def __post_init__(self):
        if not (isinstance(self.epochs, (int, float)) and not isinstance(self.epochs, bool)
                and math.isfinite(self.epochs) and self.epochs > 0):
            raise UserError(f"epochs must be a positive, finite number, got {self.epochs!r}")
        if int(self.batch_size) < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise UserError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise UserError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"lr must be positive, got {self.lr!r}")
        if not (isinstance(self.fused, bool) or self.fused == "auto"):
            raise UserError(f"fused must be true, false or \"auto\", got {self.fused!r}")
        if self.threads is not None and int(self.threads) < 1:
            raise UserError(f"threads must be >= 1, got {self.threads!r}")
        if self.monitor_samples is not None:
            n = self.monitor_samples
            if isinstance(n, float) and n.is_integer():  # TOML's 1000.0
                self.monitor_samples = n = int(n)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UserError(f"monitor_samples must be a positive integer (or unset), got "
                                f"{n!r}")

    def replace(self, **changes) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = unknown_keys(changes, known)
        if unknown:
            raise UserError(f"unknown training option(s): {', '.join(unknown)}"
                            f"{did_you_mean(unknown[0], known)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _schedules(train_epochs: int, fitness_epochs: int, fitness=None, **common) -> dict:
    """A dataset's two schedules: the same optimiser settings ``common``, their own epochs
    (and ``fitness``'s own changes, where the brief schedule differs in more than its length)."""
    return {"train": dict(epochs=train_epochs, **common),
            "fitness": dict(common, epochs=fitness_epochs, **(fitness or {}))}


# Budgets per dataset.  "fitness" is the brief schedule of the search; "train" the default of
# `gp-activations train` (also the final evaluation's full schedule, unless overridden).  Only
# the fitness schedule gives up on a run at chance after its first epoch: a full schedule runs
# to the end, so that a slow starter is measured, not cut off.
_ADAM = dict(optimizer="adam", weight_decay=0.0, schedule="cosine")
_PRESETS = {
    "mnist1d": _schedules(30, 8, batch_size=100, lr=1e-2, warmup=0.02, **_ADAM),
    # The noisier MNIST-1D for normalised residual networks (default model resnet1d).  Tuned
    # on validation accuracy, 3 seeds: Adam 1e-2 beat 3e-3 and 2e-2; at 8 epochs ReLU / SiLU
    # reach 89.6 / 90.1 %, at 12 epochs 90.6 / 90.7, at 20 no more (89.7 / 90.3).
    "mnist1d_hard": _schedules(15, 8, batch_size=100, lr=1e-2, warmup=0.02, **_ADAM),
    "digits": _schedules(20, 6, batch_size=64, lr=3e-3, warmup=0.05, **_ADAM),
    # A user's dataset without a preset of its own (bring-your-own-task) -- never MNIST-1D's:
    # Adam at 3e-3 with a short warm-up and cosine decay, a robust default for small tabular,
    # 1-D and image tasks.  Runs record the preset they used ("custom").
    "custom": _schedules(20, 8, batch_size=128, lr=3e-3, warmup=0.05, **_ADAM),
    "cifar": _schedules(200, 10, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                        warmup=0.01, schedule="cosine",
                        fitness=dict(batch_size=256, lr=0.2, warmup=0.1, schedule="linear",
                                     label_smoothing=0.1)),
}


# Per-model refinements of a dataset's preset (the model's own best schedule on that data).
_MODEL_PRESETS: dict = {
    # The unnormalised MLP learns MNIST-1D slowly: validation accuracy (3 seeds, Adam 1e-2)
    # ReLU / SiLU 71.8 / 74.4 % at 8 epochs, 75.6 / 77.5 at 15, 77.2 / 78.9 at 40, 77.7 / 79.0
    # at 60; lr 3e-2 is worse (73.1 / 71.8 at 40), 3e-3 slower.
    ("mnist1d", "mlp"): {"train": dict(epochs=40), "fitness": dict(epochs=15)},
}


def _dataset_key(name: str) -> str:
    """A known dataset's canonical name (an alias resolved); any other name as it is."""
    try:
        return data_mod.get_dataset_info(name).name
    except UserError:
        return name


def default_config(dataset: str, purpose: str = "train", model=None, **overrides) -> TrainConfig:
    """The preset budget of ``dataset`` (refined for ``model`` where the model has its own)
    for ``purpose`` ("train" or "fitness"); ``overrides`` replace single fields."""
    overrides.setdefault("chance_check", purpose == "fitness")
    overrides.setdefault("blowup_limit", 1e4 if purpose == "fitness" else None)
    name = str(dataset).strip().lower()
    name = _dataset_key(name)  # "CIFAR-10" is cifar10, not the mnist1d preset
    key = "cifar" if name.startswith("cifar") else name
    if key not in _PRESETS:
        key = "custom"  # a user's dataset: the documented custom preset, never MNIST-1D's
    presets = _PRESETS[key]
    if purpose not in presets:
        raise UserError(f"purpose must be 'train' or 'fitness', got {purpose!r}")
    values = dict(presets[purpose], preset=f"{key}/{purpose}")
    refined = _MODEL_PRESETS.get((key, model), {}).get(purpose) if isinstance(model, str) else None
    if refined:
        values.update(refined, preset=f"{key}+{model}/{purpose}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


# ---------------------------------------------------------------------------------------------
# Result record
# ---------------------------------------------------------------------------------------------


class FusionWhy(str, enum.Enum):
    """Why a training ran its activation compiled (fused) or eager."""

    NOT_ASKED = "not asked"  # fused = false, or nothing to decide (no activation sites)
    FORCED = "forced"  # fused = true
    SINGLE_OPERATOR = "single operator"  # one built-in operator is one kernel already
    COST_MODEL = "cost model"  # fused = "auto": the predicted saving against the compile time
    COMPILE_FAILED = "compile failed"  # inductor could not compile it: eager fallback

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FusionDecision:
    """Whether (and why) a training's activation ran compiled; ``str()`` is the one-line
    prose the training records show."""

    fused: bool = False
    why: FusionWhy = FusionWhy.NOT_ASKED
    detail: str = ""  # the cost model's numbers, or inductor's error
    compile_seconds: Optional[float] = None  # where it compiled in this training

    def __str__(self) -> str:
        if self.why is FusionWhy.NOT_ASKED:
            text = "fused" if self.fused else ""
        elif self.why is FusionWhy.SINGLE_OPERATOR:
            text = "eager: a single built-in operator is one kernel already"
        elif self.why is FusionWhy.COMPILE_FAILED:
            text = f"eager: inductor could not compile it ({self.detail})"
        elif self.why is FusionWhy.FORCED:
            text = "fused"
        else:
            text = ("fused: " if self.fused else "eager: ") + self.detail
        if self.compile_seconds is not None:
            text = f"{text or 'fused'}; compiled in {self.compile_seconds:.2f} s"
        return text

    def to_dict(self) -> dict:
        return {"fused": self.fused, "why": str(self.why), "detail": self.detail,
                "compile_seconds": self.compile_seconds, "text": str(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "FusionDecision":
        """Inverse of :meth:`to_dict` (its ``text`` is derived, not read)."""
        return cls(bool(data.get("fused", False)), FusionWhy(data.get("why", "not asked")),
                   data.get("detail", ""), data.get("compile_seconds"))


@dataclass
class TrainResult:
    """What one training run produced.  ``accuracy`` is the final accuracy on ``split``."""

    status: str  # "ok", "diverged", "chance", "timeout", "failed"
    reason: str
    accuracy: float  # final accuracy on the evaluation split (the fitness); nan if none
    best_accuracy: float
    split: str  # "val" (fitness) or "test" (final evaluation)
    epochs_done: float
    loss_curve: list = field(default_factory=list)  # mean training loss per epoch
    accuracy_curve: list = field(default_factory=list)  # evaluation accuracy per epoch
    wall_time: float = 0.0  # whole call, including model construction
    train_time: float = 0.0  # optimisation steps only
    samples_per_sec: float = 0.0
    param_trajectory: list = field(default_factory=list)  # per epoch: {site: {param: value}}
    seed: int = 0
    device: str = "cpu"
    fused: bool = False  # whether the activation ran compiled
    fusion: FusionDecision = field(default_factory=FusionDecision)  # why (or why not) fused
    activation: str = ""
    model: str = ""
    dataset: str = ""
    config: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __post_init__(self):
        if isinstance(self.fusion, dict):  # a record read back from JSON
            self.fusion = FusionDecision.from_dict(self.fusion)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fusion": self.fusion.to_dict()}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def cpu_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 / AMX): there bf16
    autocast measured 1.7x faster on ResNet-20 steps; elsewhere it would be slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - other builds
        return False


def resolve_device(device: str = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available "
                        "(use --device cpu or auto)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu or cuda") from None


def resolve_activation(activation, primitives="pangaea") -> Union[Activation, Callable]:
    """An Activation, a zoo name, an expression string, or any module factory (nn.ReLU)."""
    if isinstance(activation, Activation) or callable(activation):
        return activation
    if isinstance(activation, str):
        return zoo.resolve(activation, primitives)
    raise UserError(f"activation must be an expression, a zoo name or a factory, "
                    f"got {type(activation).__name__}")


def activation_label(activation) -> str:
    if isinstance(activation, Activation):
        return str(activation)
    return getattr(activation, "__name__", type(activation).__name__)


_DATA_CACHE: dict = {}


def get_dataset(dataset, device, data_dir=None, download=False, verify=True, seed=0,
                val_size=None, test_size=None):
    """A dataset on ``device``, cached per process so that a worker loads it once
    (``val_size`` / ``test_size``: :func:`gp_activations.data.load_dataset`)."""
    if isinstance(dataset, data_mod.Dataset):
        return dataset if dataset.device == device else dataset.to(device)
    key = (dataset, str(data_dir), bool(verify), seed, str(device), val_size, test_size)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = data_mod.load_dataset(dataset, data_dir=data_dir, download=download,
                                                 verify=verify, device=device, seed=seed,
                                                 val_size=val_size, test_size=test_size)
    return _DATA_CACHE[key]


def build_network(model, act_factory, ds: data_mod.Dataset) -> nn.Module:
    """A registered model by name, or a user's callable taking an activation factory."""
    if isinstance(model, str):
        in_channels = ds.input_shape[0] if len(ds.input_shape) > 1 else None
        return models_mod.build_model(model, act_factory, num_classes=ds.num_classes,
                                      in_channels=in_channels)
    if callable(model):
        # A user's model may call act(), act(C) or act(num_channels=C), whatever the factory
        # underneath accepts (nn.ReLU takes no channel count; an Activation's factory does); a
        # factory without an activation argument gets its activations replaced (adapt.py).
        return adapt_mod.build_user_model(model, models_mod.as_site_factory(act_factory),
                                          ds.num_classes)
    raise UserError(f"model must be a name ({', '.join(models_mod.model_names())}) or a callable")


def check_model(model, dataset, *, data_dir=None, verify=True, download=False) -> None:
    """Fail fast, with one line, when ``model`` cannot take ``dataset``'s inputs -- instead of
    every candidate of a search failing the same way.  One forward pass of two samples."""
    from .references import resolve_reference

    if isinstance(dataset, str) and ":" in dataset:  # a user's loader, "file.py:function"
        dataset = resolve_reference(dataset)
    ds = get_dataset(dataset if isinstance(dataset, str) else data_mod.as_dataset(dataset),
                     torch.device("cpu"), data_dir=data_dir, download=download, verify=verify)
    name = ds.name
    if model is None:
        if name not in data_mod.dataset_names():
            raise UserError(f"dataset {name!r} has no default model; give a model")
        model = data_mod.get_dataset_info(name).default_model
    if isinstance(model, str) and ":" in model:
        model = resolve_reference(model)
    net = build_network(model, nn.ReLU, ds)
    # a shape mismatch or a head of the wrong width, as bad input saying what to change
    problem = adapt_mod.check_fit(net, ds.x_train[:2], ds.num_classes, model)
    if problem:
        label = model if isinstance(model, str) else getattr(model, "__name__", "the model")
        who = "the model" if label == "<lambda>" else f"model {label!r}"
        raise UserError(f"{who} does not fit dataset {name!r} (inputs of shape "
                        f"{tuple(ds.input_shape)}): {problem}")


def _activation_factory(activation, config: TrainConfig):
    if isinstance(activation, Activation):
        return activation.factory(per_channel=config.per_channel, fused=config.fused is True)
    return activation


def site_parameters(net: nn.Module) -> dict:
    """{site name: {param: value}} for every activation site that has learnable scalars."""
    out = {}
    sites = models_mod.activation_sites(net)
    if not sites:  # a user's model that called the factory directly: its modules are untagged
        sites = [(n, m) for n, m in net.named_modules() if isinstance(m, ActivationModule)]
    for name, module in sites:
        if isinstance(module, ActivationModule) and module.param_names:
            out[name] = module.parameter_values()
    return out


def _lr_lambda(config: TrainConfig, total_steps: int):
    warm = max(1, int(round(config.warmup * total_steps))) if config.warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if config.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _optimizer(net: nn.Module, config: TrainConfig):
    # Learnable activation scalars get no weight decay: decaying a multiplicative scalar
    # toward 0 pulls the function toward a different one, not toward a simpler one.
    act_params = {id(p) for m in net.modules() if isinstance(m, ActivationModule)
                  for p in m.parameters(recurse=False)}
    decay = [p for p in net.parameters() if id(p) not in act_params]
    no_decay = [p for p in net.parameters() if id(p) in act_params]
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    # The fused (single-kernel) implementations measured 17 % faster steps on cnn1d (CPU).
    if config.optimizer == "adam":
        return _fused_if_possible(torch.optim.Adam, groups, lr=config.lr)
    return _fused_if_possible(torch.optim.SGD, groups, lr=config.lr, momentum=config.momentum,
                              nesterov=config.nesterov and config.momentum > 0)


def _fused_if_possible(cls, groups, **kwargs):
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without fused kernels
        return cls(groups, **kwargs)


@torch.no_grad()
def evaluate_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
                      channels_last: bool = False, amp: bool = False) -> float:
    """Top-1 accuracy of ``net`` on ``(x, y)`` (one host sync at the end)."""
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(xb)
        correct += (logits.argmax(1) == y[start:start + batch_size]).sum()
    net.train()
    return correct.item() / max(1, len(x))


# ---------------------------------------------------------------------------------------------
# The training run
# ---------------------------------------------------------------------------------------------


def train(activation, dataset="mnist1d", model=None, config: Optional[TrainConfig] = None, *,
          seed: int = 0, device="auto", split: str = "val", primitives="pangaea",
          data_dir=None, download=False, verify=True, progress=None, val_size=None,
          test_size=None, **overrides) -> TrainResult:
    """Train ``model`` with ``activation`` on ``dataset`` and return a :class:`TrainResult`.

    ``activation``: an :class:`Activation`, an expression, a zoo name or a module factory.
    ``dataset``: a name (``mnist1d``, ``digits``, ``cifar10``, ``cifar100``) or a
    :class:`~gp_activations.data.Dataset`.  ``model``: a registered name (default: the
    dataset's) or a callable ``model(act_factory)``.  ``config``: a :class:`TrainConfig`
    (default: the dataset's "train" preset); keyword ``overrides`` replace single fields.
    ``split``: where accuracy is measured -- ``"val"`` (fitness) or ``"test"`` (final).
    ``progress``: optional callable ``progress(epoch, loss, accuracy)``.  ``val_size`` /
    ``test_size``: ``mnist1d_hard``'s split sizes (:func:`gp_activations.data.load_dataset`).
    """
    started = time.perf_counter()
    dev = resolve_device(device)
    if split not in ("val", "test"):
        raise UserError(f"split must be 'val' or 'test', got {split!r}")
    # canonical name: an alias ("cifar-10") must get its dataset's preset and default model
    ds_name = (dataset.name if isinstance(dataset, data_mod.Dataset)
               else data_mod.get_dataset_info(dataset).name)
    if config is None:
        config = default_config(ds_name, "train", model if isinstance(model, str) else None)
    if overrides:
        config = config.replace(**overrides)
    act = resolve_activation(activation, primitives)
    ds = get_dataset(dataset, dev, data_dir=data_dir, download=download, verify=verify,
                     val_size=val_size, test_size=test_size)
    if model is None:
        if ds_name not in data_mod.dataset_names():
            raise UserError(f"dataset {ds_name!r} has no default model; pass model=")
        model = data_mod.get_dataset_info(ds_name).default_model
    model_name = model if isinstance(model, str) else getattr(model, "__name__", "custom")
    with COMPILED.training_clock() as clock, _num_threads(config.threads):
        record = _train(act, ds, model, model_name, ds_name, config, dev, seed, split, progress,
                        started, clock)
    return _with_compile_outcome(record, act, clock)


def _with_compile_outcome(record: TrainResult, act, clock: CompileClock) -> TrainResult:
    """``record`` with what the activation's compiled function did in this training: it fell
    back to eager (inductor could not compile it), or it ran fused and compiled in the seconds
    ``clock`` counted."""
    fused_fn = (COMPILED.fused_of(act.program)
                if record.fused and isinstance(act, Activation) else None)
    if fused_fn is None:
        return record
    if fused_fn.fallback:
        record.fused = False
        record.fusion = FusionDecision(False, FusionWhy.COMPILE_FAILED, fused_fn.fallback)
    else:
        why = record.fusion.why if record.fusion.why is FusionWhy.COST_MODEL else FusionWhy.FORCED
        record.fusion = dataclasses.replace(record.fusion, fused=True, why=why,
                                            compile_seconds=clock.seconds)
    return record


@contextlib.contextmanager
def _num_threads(threads: Optional[int]):
    """torch's thread count for a block (it is process-wide: given back afterwards)."""
    previous = torch.get_num_threads()
    if threads and previous != int(threads):
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@dataclass
class _Run:
    """One training's fixed parts, set up before its first step."""

    net: nn.Module
    ds: data_mod.Dataset
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    batch: int  # samples per step
    steps_per_epoch: int
    total_steps: int
    chance: float  # accuracy of always guessing the commonest evaluation class
    channels_last: bool
    amp: bool
    dev: torch.device
    clock: CompileClock

    def autocast(self):
        # (a disabled autocast still costs its context manager on every step of a tiny model)
        if self.amp:
            return torch.autocast(self.dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class _Progress:
    """How far a training has got: steps taken, seconds spent in them, samples seen."""

    step: int = 0
    train_time: float = 0.0
    samples: int = 0


def _train(act, ds, model, model_name, ds_name, config, dev, seed, split, progress,
           started, clock: CompileClock) -> TrainResult:
    channels_last, amp = _layout(ds, config, dev)
    record = TrainResult(status="ok", reason="", accuracy=float("nan"),
                         best_accuracy=float("nan"), split=split, epochs_done=0, seed=seed,
                         device=str(dev), activation=activation_label(act), model=model_name,
                         dataset=ds_name, config=config.to_dict())
    torch.manual_seed(seed)
    try:
        net = build_network(model, _activation_factory(act, config), ds).to(dev)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a broken activation must not crash a search
        return _failed(record, exc, started)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    run = _set_up(net, ds, config, dev, seed, split, channels_last, amp, clock)
    ended = _before_first_step(record, act, run, config, started)
    if ended is not None:
        return ended
    return _optimise(record, run, config, progress, started)


def _layout(ds: data_mod.Dataset, config: TrainConfig, dev: torch.device) -> tuple:
    """(channels_last, amp) of a training on ``dev`` (and cudnn's autotuner on on CUDA)."""
    on_cuda = dev.type == "cuda"
    image_model = len(ds.input_shape) == 3
    channels_last = image_model and (config.channels_last if config.channels_last is not None else True)
    amp = config.amp if config.amp is not None else (on_cuda or (image_model and cpu_bf16()))
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    return channels_last, amp


def _set_up(net: nn.Module, ds: data_mod.Dataset, config: TrainConfig, dev: torch.device,
            seed: int, split: str, channels_last: bool, amp: bool, clock: CompileClock) -> _Run:
    """The optimiser, the step plan, the learning-rate schedule and the batch generator."""
    optimizer = _optimizer(net, config)
    x_eval, y_eval = ds.split(split)
    n = len(ds.x_train)
    batch = min(int(config.batch_size), n)
    steps_per_epoch = max(1, n // batch)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(config.max_steps_per_epoch))
    total_steps = max(1, int(round(config.epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    chance = float(torch.bincount(y_eval, minlength=ds.num_classes).max().item()) / max(1, len(y_eval))
    return _Run(net, ds, optimizer, scheduler, gen, x_eval, y_eval, batch, steps_per_epoch,
                total_steps, chance, channels_last, amp, dev, clock)


def _before_first_step(record: TrainResult, act, run: _Run, config: TrainConfig,
                       started: float) -> Optional[TrainResult]:
    """Fuse (or not) and compile the activation, then check for a blow-up at initialisation;
    the finished record where the training ends here ("failed", "diverged"), else None."""
    sites = [m for m in run.net.modules() if isinstance(m, ActivationModule)]
    probe = run.ds.x_train[:run.batch]
    if run.channels_last:
        probe = probe.contiguous(memory_format=torch.channels_last)
    if config.fused == "auto" and sites:
        try:
            _decide_fusion(record, act, run.net, sites, probe, run.total_steps, run.dev)
        except Exception as exc:  # noqa: BLE001 -- e.g. a user operator raising: this candidate fails
            return _failed(record, exc, started)
    record.fused = any(m.fused for m in sites)
    if record.fused:
        try:
            _compile_fused(run.net, sites, probe, run.amp, run.dev, run.clock)
        except Exception as exc:  # noqa: BLE001 -- the function's own error: it fails, as eager would
            return _failed(record, exc, started)
    if config.blowup_limit:
        try:
            blowup = _blowup_at_init(run.net, run.ds.x_train[:run.batch], config.blowup_limit,
                                     run.channels_last)
        except Exception as exc:  # noqa: BLE001 -- e.g. a user operator raising: this candidate fails
            return _failed(record, exc, started)
        if blowup:
            return _finish(record, "diverged", blowup, started, 0.0, 0)
    return None


def _optimise(record: TrainResult, run: _Run, config: TrainConfig, progress,
              started: float) -> TrainResult:
    """The epochs, each followed by its evaluation and checks, until the steps are done or a
    check ends the training."""
    sites = site_parameters(run.net)
    if sites:
        record.param_trajectory.append(sites)
    done = _Progress()
    run.net.train()
    try:
        while done.step < run.total_steps:
            mean_loss = _epoch(run, config, done, started)
            ended = _after_epoch(record, run, config, done, mean_loss, progress, started)
            if ended is not None:
                return ended
    except Exception as exc:  # noqa: BLE001 -- e.g. a user operator raising
        return _failed(record, exc, started)
    return _finish(record, "ok", "", started, done.train_time, done.samples)


def _epoch(run: _Run, config: TrainConfig, done: _Progress, started: float) -> float:
    """One epoch's steps (fewer where the loss is not finite or time is up); its mean loss."""
    epoch_start = time.perf_counter()
    perm = torch.randperm(len(run.ds.x_train), device=run.dev, generator=run.gen)
    loss_sum = torch.zeros((), device=run.dev)
    epoch_steps = min(run.steps_per_epoch, run.total_steps - done.step)
    for i in range(epoch_steps):
        idx = perm[i * run.batch:(i + 1) * run.batch]
        loss_sum += _step(run, config, idx)
        done.step += 1
        done.samples += len(idx)
        # Catch a diverging candidate early (a host sync every 25 steps is cheap).
        if i % 25 == 24 and not torch.isfinite(loss_sum).item():
            break
        if config.time_limit and time.perf_counter() - started > config.time_limit:
            break
    done.train_time += time.perf_counter() - epoch_start
    return loss_sum.item() / (i + 1)


def _step(run: _Run, config: TrainConfig, idx: torch.Tensor) -> torch.Tensor:
    """One optimisation step on the training samples ``idx``; its loss (on the device)."""
    xb, yb = run.ds.x_train[idx], run.ds.y_train[idx]
    if run.ds.augment:
        xb = data_mod.augment_crop_flip(xb, generator=run.gen)
    if run.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with run.autocast():
        logits = run.net(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=config.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    return loss.detach()


def _after_epoch(record: TrainResult, run: _Run, config: TrainConfig, done: _Progress,
                 mean_loss: float, progress, started: float) -> Optional[TrainResult]:
    """Record an epoch (loss, accuracy, the scalars), report it, and check whether the training
    ends here: the finished record ("diverged", "timeout", "chance"), else None."""
    record.epochs_done = round(done.step / run.steps_per_epoch, 4)
    record.loss_curve.append(mean_loss)
    if not math.isfinite(mean_loss):
        return _finish(record, "diverged", f"non-finite training loss in epoch "
                       f"{len(record.loss_curve)}", started, done.train_time, done.samples)
    partial = (config.monitor_samples is not None and done.step < run.total_steps
               and config.monitor_samples < len(run.y_eval))
    acc = _score(run, config, config.monitor_samples if partial else None)
    record.accuracy_curve.append(acc)
    record.accuracy = acc
    record.best_accuracy = max(record.accuracy_curve)
    sites = site_parameters(run.net)
    if sites:
        record.param_trajectory.append(sites)
    if progress is not None:
        progress(len(record.loss_curve), mean_loss, acc)
    ended = _early_end(record, run, config, done, mean_loss, acc, started)
    if partial and ended is not None:  # its last epoch (timeout, chance): the whole split
        record.accuracy = record.accuracy_curve[-1] = _score(run, config, None)
        record.best_accuracy = max(record.accuracy_curve)
    return ended


def _score(run: _Run, config: TrainConfig, samples: Optional[int]) -> float:
    """Accuracy on the evaluation split, or on its first ``samples`` samples."""
    x, y = (run.x_eval, run.y_eval) if samples is None else (run.x_eval[:samples],
                                                             run.y_eval[:samples])
    return evaluate_accuracy(run.net, x, y, config.eval_batch_size, run.channels_last, run.amp)


def _early_end(record: TrainResult, run: _Run, config: TrainConfig, done: _Progress,
               mean_loss: float, acc: float, started: float) -> Optional[TrainResult]:
    """The time limit, and after the first epoch of a fitness training the chance checks."""
    if config.time_limit and time.perf_counter() - started > config.time_limit:
        return _finish(record, "timeout", f"time limit of {config.time_limit:g} s reached "
                       f"after {record.epochs_done:g} epochs", started, done.train_time,
                       done.samples)
    if not (config.chance_check and len(record.accuracy_curve) == 1
            and done.step < run.total_steps):
        return None
    if acc <= run.chance + 0.02:
        return _finish(record, "chance", f"accuracy {acc:.3f} at chance level "
                       f"({run.chance:.3f}) after the first epoch", started, done.train_time,
                       done.samples)
    reason = _not_learning(mean_loss, acc, run.chance, run.ds.num_classes)
    if reason:
        return _finish(record, "diverged", reason, started, done.train_time, done.samples)
    return None


def _decide_fusion(record: TrainResult, act, net: nn.Module, sites: list, probe: torch.Tensor,
                   steps: int, dev: torch.device) -> None:
    """``fused = "auto"``: one eval-mode forward pass of ``probe`` counts the elements each
    activation site sees per step; the cost model decides; the sites switch."""
    if not isinstance(act, Activation):
        return
    if not act.program.worth_fusing:
        record.fusion = FusionDecision(False, FusionWhy.SINGLE_OPERATOR)
        return
    decision = fusion_mod.decide(act, activation_site_sizes(net, probe), steps, dev.type)
    record.fusion = FusionDecision(decision.fuse, FusionWhy.COST_MODEL, decision.reason)
    if decision.fuse:
        for module in sites:
            module.set_fused(True)


def _compile_fused(net: nn.Module, sites: list, probe: torch.Tensor, amp: bool,
                   dev: torch.device, clock: CompileClock) -> None:
    """Compile the fused activations' training graphs, forward *and backward*, before the first
    step: one forward and backward of ``probe`` in eval mode under the training's autocast
    (no BatchNorm statistics change, no random numbers drawn, gradients cleared after).  A graph
    inductor cannot compile -- the backward's too, which no forward call could catch -- turns
    that function eager (:class:`~gp_activations.fusion.FusedFunction`) before training.
    ``clock``: the training's, into which the forward graphs' compiles report themselves."""
    fns = {id(m.function): m.function for m in sites if m.fused}
    counted = clock.seconds
    started = time.perf_counter()
    try:
        with _eval_mode(net):
            for _ in range(2):  # a second pass once a failing backward turned a function eager
                try:
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        out = net(probe)
                    out.float().sum().backward()
                    break
                except Exception as exc:  # noqa: BLE001 -- the backward's compile failed
                    compiled = [fn for fn in fns.values() if fn.fallback is None]
                    if not compiled:
                        raise
                    for fn in compiled:
                        fn.give_up(exc)
    finally:
        net.zero_grad(set_to_none=True)
    # the backward graphs compiled inside autograd: their time goes to the functions (and so to
    # the training's clock), shared out
    backward = max(0.0, time.perf_counter() - started - (clock.seconds - counted))
    for fn in fns.values():
        fn.add_compile_seconds(backward / len(fns))


@contextlib.contextmanager
def _eval_mode(net: nn.Module):
    """``net`` in eval mode for a block (BatchNorm statistics untouched, dropout off)."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def activation_site_sizes(net: nn.Module, xb: torch.Tensor) -> list:
    """Elements each activation call of ``net`` sees for the batch ``xb`` (one eval-mode
    forward without gradient: no BatchNorm statistics change, no random numbers are drawn)."""
    sizes: list = []
    handles = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
               for m in net.modules() if isinstance(m, ActivationModule)]
    try:
        with torch.no_grad(), _eval_mode(net):
            net(xb)
    finally:
        for h in handles:
            h.remove()
    return sizes


def _blowup_at_init(net: nn.Module, xb: torch.Tensor, limit: float, channels_last: bool):
    """The reason a network blows up at initialisation (one forward pass, no gradient), or
    None: the first activation site whose output is not finite or has an RMS above ``limit``."""
    sites = models_mod.activation_sites(net) or [
        (n, m) for n, m in net.named_modules() if isinstance(m, ActivationModule)]
    if not sites:
        return None
    found: list = []

    def hook(name, index):
        def check(_module, _inputs, output):
            if found or not isinstance(output, torch.Tensor):
                return
            rms = output.detach().double().pow(2).mean().sqrt().item()
            if not math.isfinite(rms) or rms > limit:
                found.append(f"activations blow up at initialisation: output RMS {rms:.3g} at "
                             f"site {index + 1} of {len(sites)} ({name}), limit {limit:g}")
        return check

    handles = [m.register_forward_hook(hook(n, i)) for i, (n, m) in enumerate(sites)]
    try:
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            net(xb)  # train mode: the batch statistics a first step would see
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


#: After the first epoch of a fitness training, a run whose mean training loss is this much
#: above ln(classes) -- a uniform guess's loss -- while its accuracy is within this fraction of
#: the way from chance to 1 is not learning: its activations' scale grows through the network
#: (x² in a BatchNorm ResNet: loss 2.57, accuracy 0.14 on MNIST-1D).  Measured margins: a slow
#: starter that recovers (x·(1 + min(x, 0.71)) on resnet1d, loss 2.32, acc 0.14) and an
#: unnormalised net that learns with large logits (x² + |x| on the mlp, loss 3.9, acc 0.51)
#: both pass.
NOT_LEARNING_LOSS_MARGIN = 0.1
NOT_LEARNING_ACCURACY = 0.15


def _not_learning(mean_loss: float, acc: float, chance: float, classes: int) -> Optional[str]:
    uniform = math.log(max(2, classes))
    near_chance = chance + NOT_LEARNING_ACCURACY * (1 - chance)
    if mean_loss > uniform + NOT_LEARNING_LOSS_MARGIN and acc < near_chance:
        return (f"not learning: mean training loss {mean_loss:.3f} in the first epoch is above "
                f"a uniform guess's ln({classes}) = {uniform:.3f} and accuracy {acc:.3f} is near "
                f"chance ({chance:.3f}) -- the activations' scale grows through the network")
    return None


def _finish(record: TrainResult, status: str, reason: str, started: float, train_time: float,
            samples: int) -> TrainResult:
    record.status, record.reason = status, reason
    record.train_time = train_time
    record.samples_per_sec = samples / train_time if train_time > 0 else 0.0
    record.wall_time = time.perf_counter() - started
    return record


def _failed(record: TrainResult, exc: BaseException, started: float) -> TrainResult:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    first = (str(exc).strip().splitlines() or [""])[0]
    return _finish(record, "failed", f"{type(exc).__name__}: {first}{where}", started, 0.0, 0)
