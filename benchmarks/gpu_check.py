"""Exercise the CUDA path: resnet20 on random CIFAR-shaped data, ReLU vs three evolved-style
activations (one learnable scalar each, as trainer_throughput.py's CPU table), eager and fused,
printing samples/s relative to ReLU, peak GPU memory and what ``fused = "auto"`` picks for a
200-epoch CIFAR schedule (target: fused <= 1.10x the ReLU step).  Under 5 minutes on one GPU.

    python benchmarks/gpu_check.py [--steps 200] [--batch 256]

Exits with status 2 and one line when no GPU is available (tests and CI run on the CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from gp_activations import Activation
from gp_activations.data import Dataset
from gp_activations.train import TrainConfig, train

from trainer_throughput import EVOLVED  # noqa: E402 -- the CPU table's functions (this folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per activation")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU available on this machine; nothing to check", file=sys.stderr)
        return 2
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="gp_act_inductor_"))
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, bf16 autocast + channels_last")
    g = torch.Generator(device=dev).manual_seed(0)
    n = args.batch * 40
    x = torch.randn(n, 3, 32, 32, device=dev, generator=g)
    y = torch.randint(0, 10, (n,), device=dev, generator=g)
    ds = Dataset("cifar-shaped", 10, x, y, x[:2048], y[:2048], x[:2048], y[:2048], augment=True)
    steps_per_epoch = n // args.batch
    epochs = max(1, args.steps // steps_per_epoch)
    from gp_activations import fusion
    from gp_activations.models import build_model
    from gp_activations.train import activation_site_sizes

    runs = [("relu", "relu", False, "")]
    for name, expr in EVOLVED:
        act = Activation.from_string(expr, params=[0])
        net = build_model("resnet20", act.factory(), num_classes=10, in_channels=3).to(dev)
        pick = fusion.decide(act, activation_site_sizes(net, x[:args.batch]), 200 * 390, "cuda")
        note = f"auto: {'fused' if pick.fuse else 'eager'}"
        runs += [(f"{name} (eager)", act, False, note), (f"{name} (fused)", act, True, note)]
    rows = []
    for label, activation, fused, note in runs:
        cfg = TrainConfig(epochs=epochs, batch_size=args.batch, optimizer="sgd", lr=0.1,
                          fused=fused, chance_check=False)
        train(activation, ds, "resnet20", cfg.replace(epochs=1, max_steps_per_epoch=5), device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        record = train(activation, ds, "resnet20", cfg, device="cuda")
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        rows.append((label, record.samples_per_sec, peak, record.status, note))
    print(f"\n{'activation':24s} {'samples/s':>10s} {'step vs relu':>12s} {'peak MiB':>9s} "
          f"{'status':>7s}")
    for label, sps, peak, status, note in rows:
        print(f"{label:24s} {sps:10.0f} {rows[0][1] / sps:11.2f}x {peak:9.0f} {status:>7s}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
