"""What a larger validation split costs a training (issue 19): the same training scored on the
dataset's own split, on a large one after every epoch, and on a large one with
``monitor_samples`` (a subset after every epoch but the last, the whole split after it).

    python benchmarks/split_cost.py                     # resnet1d, 8-epoch fitness, ~2-3 min
    python benchmarks/split_cost.py --quick             # cnn1d, 1 epoch, seconds

Each line: the split, how it was scored, the final accuracy (identical for the two large-split
rows: the same network), the evaluation + set-up time (wall - training time) and its share of
the training time.  One thread; the first large-split row also pays the one-time generation of
the extra samples unless they are cached (run it twice to see the steady state).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gp_activations.train import default_config, train  # noqa: E402


def measure(model: str, val_size: int, monitor: int, epochs=None, act: str = "relu") -> list:
    rows = []
    for size, watched in ((None, None), (val_size, None), (val_size, monitor)):
        cfg = default_config("mnist1d_hard", "fitness", model).replace(monitor_samples=watched)
        if epochs is not None:
            cfg = cfg.replace(epochs=epochs)
        r = train(act, "mnist1d_hard", model, cfg, seed=0, device="cpu", val_size=size)
        overhead = r.wall_time - r.train_time
        rows.append({"val_size": size or 1000, "monitor_samples": watched,
                     "accuracy": r.accuracy, "train_s": round(r.train_time, 2),
                     "overhead_s": round(overhead, 2),
                     "share": round(overhead / r.train_time, 3)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet1d")
    ap.add_argument("--val-size", type=int, default=20_000)
    ap.add_argument("--monitor", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="cnn1d, 1 epoch, 1,500 samples")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = (measure("cnn1d", 1500, 500, epochs=1) if args.quick
            else measure(args.model, args.val_size, args.monitor))
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
