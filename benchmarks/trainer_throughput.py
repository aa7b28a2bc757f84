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

Then the per-step cost of two evolved-style activations relative to ReLU on resnet20, eager
and fused (torch.compile).

    python benchmarks/trainer_throughput.py [--threads 2] [--cifar-steps 12]
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
           ("max(mish,silu)", "max(mul(x, tanh(softplus(x))), mul(x, sigmoid(x)))")]


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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="gp_act_inductor_"))
    print(f"torch {torch.__version__}, {args.threads} threads, CPU")
    rows = []

    ds = load_dataset("mnist1d")
    cfg = TrainConfig(epochs=args.mnist1d_epochs, batch_size=100, optimizer="adam", lr=1e-2,
                      weight_decay=0.0, chance_check=False, threads=args.threads)
    steps = args.mnist1d_epochs * (len(ds.y_train) // 100)
    ref = reference_loop(ds, "cnn1d", cfg, 0, steps, augment=False)
    mine = ours(ds, "cnn1d", cfg, 0)
    rows.append(("mnist1d / cnn1d", ref, mine))

    cifar = random_cifar()
    steps = args.cifar_steps
    base = dict(epochs=1, batch_size=128, optimizer="sgd", lr=0.05, chance_check=False,
                threads=args.threads, max_steps_per_epoch=steps, eval_batch_size=256)
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

    # Cost of evolved activations relative to ReLU on resnet20 steps (ours, same data).
    cifar.augment = False
    cfg = TrainConfig(**base)
    relu = ours(cifar, "resnet20", cfg, 0)
    print(f"\nresnet20 time per step relative to ReLU ({relu:.0f} samples/s):")
    print(f"{'activation':16s} {'eager':>8s} {'fused':>8s}")
    for name, expr in EVOLVED:
        act = Activation.from_string(expr)
        eager = ours(cifar, "resnet20", cfg, 0, act)
        ours(cifar, "resnet20", cfg.replace(fused=True, max_steps_per_epoch=2), 0, act)  # compile
        fused = ours(cifar, "resnet20", cfg.replace(fused=True), 0, act)
        print(f"{name:16s} {relu / eager:7.2f}x {relu / fused:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
