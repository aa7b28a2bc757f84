"""Our trainer against a plain PyTorch training loop, measured in the same run.

The reference is what one would write by hand: ``TensorDataset`` + ``DataLoader(shuffle=True)``,
the same model (same init seed), optimizer, batch size and number of steps, eager, NCHW, fp32;
for the augmented CIFAR row, torchvision's per-sample RandomCrop + RandomHorizontalFlip in
the DataLoader.  Ours: the whole dataset as tensors, index-slice batches, augmentation on whole
batches, channels_last and (where the CPU has native bf16) bf16 autocast.

Rows:
* mnist1d / cnn1d, full epochs;
* CIFAR-shaped random data / resnet20, a slice of an epoch, without and with augmentation,
  plus ours with autocast off (to show where the speed comes from).

Then what evolved-style activations cost relative to ReLU (each with one learnable scalar on
its output, as a search's parametric variants have), eager, fused (torch.compile) and as
``fused = "auto"`` decides:

* per ResNet-20 step (CPU: bf16 autocast where the CPU has it, channels_last), fused timed
  after its compile;
* per cnn1d fitness run (MNIST-1D, ``make run``'s 12-epoch budget, one thread), the whole
  ``train`` call -- model construction and compile included -- each fused run in a fresh
  process: cold (an empty kernel cache) and warm (the cache the cold run filled).

Findings behind the fused path (gp_activations/fusion.py has them in full): the fused
max(mish, silu) cost 3.6 ReLU steps because inductor handed BatchNorm's backward an NCHW
gradient for a channels_last input (a 7x slower mixed-layout kernel: 664 vs 91 ms of
``native_batch_norm_backward`` over 3 steps in the profiler), not because of recompilations,
graph breaks or scalar loops (inductor's output code: one AVX-512 loop per graph; there was
one static -> dynamic recompile); and AOTAutograd's partitioner recomputed every transcendental in
the backward (8 SLEEF calls per element and step instead of 4).  Then its four forward
transcendentals over ~23 M elements per step: the compiled source now shares one exp among
them (gp_activations/codegen.py), 1.69-1.77 -> 1.28-1.32 ReLU steps.  The cnn1d table's
"plain" column runs eager activations on plain torch kernels (gp_activations/kernels.py off),
as before issue 12.

    python benchmarks/trainer_throughput.py [--threads 2] [--cifar-steps 12] [--parts resnet20,cnn1d]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset as TorchDataset, TensorDataset

from gp_activations import Activation
from gp_activations.data import Dataset, load_dataset
from gp_activations.models import build_model
from gp_activations.train import TrainConfig, train

EVOLVED = [("swish+sin", "add(mul(x, sigmoid(x)), mul(0.1, sin(x)))"),
           ("max(mish,silu)", "max(mul(x, tanh(softplus(x))), mul(x, sigmoid(x)))"),
           ("relu-|x|gauss", "sub(relu(x), mul(abs(x), gauss(x)))")]

# One cnn1d fitness run in a fresh process: the train() call's wall time (compile included).
_FITNESS_RUN = """
import json, sys
from gp_activations import Activation
from gp_activations.train import default_config, train
act = Activation.from_string(sys.argv[1], params=[0]) if sys.argv[1] != "relu" else "relu"
fused = {"true": True, "false": False, "auto": "auto"}[sys.argv[2]]
cfg = default_config("mnist1d", "fitness", "cnn1d").replace(epochs=12, threads=1, fused=fused)
r = train(act, "mnist1d", "cnn1d", cfg, seed=0, split="val")
print(json.dumps({"wall": r.wall_time, "fused": r.fused, "fusion": str(r.fusion), "status": r.status}))
"""


def fitness_run(expr: str, fused: str, cache: str, plain_kernels: bool = False) -> dict:
    import json
    import subprocess

    from gp_activations.kernels import PLAIN_ENV

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, PLAIN_ENV: "1" if plain_kernels else "0"}
    proc = subprocess.run([sys.executable, "-c", _FITNESS_RUN, expr, fused], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _Augmented(TorchDataset):
    """Per-sample torchvision transforms: the usual DataLoader way of augmenting CIFAR."""

    def __init__(self, x, y):
        import torchvision.transforms as T

        self.x, self.y = x, y
        self.t = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.t(self.x[i]), self.y[i]


def reference_loop(ds: Dataset, model_name: str, cfg: TrainConfig, seed: int, steps: int,
                   augment: bool) -> float:
    """Samples/s of the plain loop over ``steps`` optimisation steps."""
    torch.manual_seed(seed)
    net = build_model(model_name, nn.ReLU, num_classes=ds.num_classes,
                      in_channels=ds.input_shape[0])
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    data = _Augmented(ds.x_train, ds.y_train) if augment else TensorDataset(ds.x_train, ds.y_train)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    done, samples = 0, 0
    t0 = time.perf_counter()
    while done < steps:
        for xb, yb in loader:
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            samples += len(yb)
            if done >= steps:
                break
    return samples / (time.perf_counter() - t0)


def ours(ds: Dataset, model_name: str, cfg: TrainConfig, seed: int, act="relu") -> float:
    record = train(act, ds, model_name, cfg, seed=seed, device="cpu")
    if record.status != "ok":
        raise SystemExit(f"training failed: {record.status} {record.reason}")
    return record.samples_per_sec


def random_cifar(n: int = 4096) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("cifar-shaped", 10, x, y, x[:256], y[:256], x[:256], y[:256], augment=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cifar-steps", type=int, default=12)
    parser.add_argument("--mnist1d-epochs", type=int, default=5)
    parser.add_argument("--parts", default="loops,resnet20,cnn1d",
                        help="which tables: loops (ours vs the plain loop), resnet20, cnn1d")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - {"loops", "resnet20", "cnn1d"}:
        parser.error(f"unknown parts: {', '.join(sorted(parts - {'loops', 'resnet20', 'cnn1d'}))}")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="gp_act_inductor_"))
    print(f"torch {torch.__version__}, {args.threads} threads, CPU")
    rows = []
    cifar = random_cifar() if parts & {"loops", "resnet20"} else None
    base = dict(epochs=1, batch_size=128, optimizer="sgd", lr=0.05, chance_check=False,
                threads=args.threads, max_steps_per_epoch=args.cifar_steps, eval_batch_size=256)
    if "loops" in parts:
        loops(args, rows, cifar, base)
    if "resnet20" in parts:
        resnet20_costs(cifar, base)
    if "cnn1d" in parts:
        cnn1d_costs()
    return 0


def loops(args, rows, cifar, base):
    steps = args.cifar_steps
    ds = load_dataset("mnist1d")
    cfg = TrainConfig(epochs=args.mnist1d_epochs, batch_size=100, optimizer="adam", lr=1e-2,
                      weight_decay=0.0, chance_check=False, threads=args.threads)
    ref = reference_loop(ds, "cnn1d", cfg, 0, args.mnist1d_epochs * (len(ds.y_train) // 100),
                         augment=False)
    mine = ours(ds, "cnn1d", cfg, 0)
    rows.append(("mnist1d / cnn1d", ref, mine))

    for augment in (False, True):
        cifar.augment = augment
        ref = reference_loop(cifar, "resnet20", TrainConfig(**base), 0, steps, augment)
        mine = ours(cifar, "resnet20", TrainConfig(**base), 0)
        label = "random CIFAR / resnet20" + (" +aug" if augment else "")
        rows.append((label, ref, mine))
        if not augment:
            fp32 = ours(cifar, "resnet20", TrainConfig(**base, amp=False), 0)
            rows.append((label + " (ours: amp off)", ref, fp32))

    print(f"\n{'workload':38s} {'reference':>12s} {'ours':>12s} {'ratio':>7s}")
    for label, ref, mine in rows:
        print(f"{label:38s} {ref:9.0f}/s {mine:9.0f}/s {mine / ref:6.2f}x")


def resnet20_costs(cifar, base):
    # Cost of evolved activations relative to ReLU on resnet20 steps (ours, same data).
    from gp_activations import fusion
    from gp_activations.train import activation_site_sizes

    cifar.augment = False
    cfg = TrainConfig(**base)
    relu = ours(cifar, "resnet20", cfg, 0)
    full_steps = 200 * (50000 // 128)  # the CIFAR preset's schedule, for auto's decision
    print(f"\nresnet20 time per step relative to ReLU ({relu:.0f} samples/s; fused: after its "
          f"compile; auto: what fused = \"auto\" picks for a 200-epoch CIFAR schedule):")
    print(f"{'activation':16s} {'eager':>8s} {'fused':>8s} {'auto':>14s}")
    for name, expr in EVOLVED:
        act = Activation.from_string(expr, params=[0])
        eager = ours(cifar, "resnet20", cfg.replace(fused=False), 0, act)
        ours(cifar, "resnet20", cfg.replace(fused=True, max_steps_per_epoch=2), 0, act)  # compile
        fused = ours(cifar, "resnet20", cfg.replace(fused=True), 0, act)
        net = build_model("resnet20", act.factory(), num_classes=10, in_channels=3)
        sizes = activation_site_sizes(net, cifar.x_train[:128])
        pick = fusion.decide(act, sizes, full_steps, "cpu")
        chosen = fused if pick.fuse else eager
        print(f"{name:16s} {relu / eager:7.2f}x {relu / fused:7.2f}x {relu / chosen:7.2f}x "
              f"({'fused' if pick.fuse else 'eager'})")


def cnn1d_costs():
    # cnn1d fitness runs, whole train() call, each fused run in a fresh process
    cache = tempfile.mkdtemp(prefix="gp_act_bench_cache_")
    base_run = fitness_run("relu", "false", cache)
    print(f"\ncnn1d fitness run (MNIST-1D, 12 epochs, 1 thread; ReLU {base_run['wall']:.2f} s) "
          f"relative to ReLU, compile included:")
    print(f"{'activation':16s} {'eager':>8s} {'plain':>8s} {'fused cold':>11s} {'fused warm':>11s} "
          f"{'auto':>8s}  auto's choice   (plain: eager on plain torch kernels, before issue 12)")
    for name, expr in EVOLVED:
        eager = fitness_run(expr, "false", cache)
        plain = fitness_run(expr, "false", cache, plain_kernels=True)
        cold = fitness_run(expr, "true", cache)
        warm = fitness_run(expr, "true", cache)
        auto = fitness_run(expr, "auto", cache)
        w = base_run["wall"]
        print(f"{name:16s} {eager['wall'] / w:7.2f}x {plain['wall'] / w:7.2f}x {cold['wall'] / w:10.2f}x "
              f"{warm['wall'] / w:10.2f}x {auto['wall'] / w:7.2f}x  {auto['fusion']}")


if __name__ == "__main__":
    sys.exit(main())
