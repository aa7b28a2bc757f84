"""How much of the seed-to-seed spread on resnet1d / mnist1d_hard is the split's, and how much
the networks' own (issue 19, item 1).

Each function is trained once per seed with the project's own :func:`gp_activations.train.train`
(full "train" preset, accuracy on the usual 1,000-sample validation split); the trained network
is kept (the model is passed as a callable that builds the registered model and remembers it --
the very network ``model="resnet1d"`` builds) and then scored on four splits:

* ``val``  -- the dataset's 1,000-sample validation split (what a search's fitness sees),
* ``test`` -- its 4,000-sample test split (what ``evaluate`` reports),
* ``val_big`` / ``test_big`` -- fresh samples (default 20,000 / 50,000) from the same
  generator and noise settings with another generation seed, normalised with the original
  generation's own mean and std (the generator standardises each generated set by itself; the
  original's constants are recomputed from its raw signals and checked to reproduce the cached
  arrays), so they are draws from the distribution the network was trained on, disjoint from
  its training samples (checked: no row equal).

From the per-example predictions: the mean pairwise disagreement between two seeds (predicted
labels, and correctness), and the decomposition of a fixed split's seed-to-seed variance::

    Var_seeds(acc on a fixed split of n) ~= Var_net + split_var(n),   split_var(n) = D / (2 n)

where ``Var_net`` is the spread of the networks' accuracy on the distribution (~ the spread on
the big split, less its own small split_var) and ``D`` the mean pairwise *correctness*
disagreement between two seeds (per-example errors independent given the networks, as Jordan,
ICLR 2024, found).  ``sqrt(p (1 - p) / n)`` -- the binomial std -- is the error of one
network's accuracy as an estimate of its distribution accuracy (what redrawing the split would
do), printed for comparison.

Proxy check: Spearman between the search's fitness (the "fitness" preset, 8 epochs, 1 seed,
validation split) and the full-schedule test accuracy among the ``--rank-functions``.

    python benchmarks/noise.py --seeds 5 --out noise.json          # ~25-35 min, 1 CPU thread
    python benchmarks/noise.py --quick                               # seconds: cnn1d, tiny splits
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from typing import Optional, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Pure helpers (tested in tests/test_noise_splits.py)
# ---------------------------------------------------------------------------------------------


def binomial_std(p: float, n: int) -> float:
    """Std of the accuracy measured on ``n`` independent samples when the true accuracy is p."""
    return math.sqrt(p * (1.0 - p) / n)


def disagreement(a: Sequence, b: Sequence) -> float:
    """Fraction of positions where two prediction (or correctness) vectors differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("two non-empty vectors of the same length are needed")
    return float(np.mean(a != b))


def mean_pairwise_disagreement(vectors: Sequence) -> float:
    """Mean of :func:`disagreement` over all pairs (nan for fewer than two vectors)."""
    pairs = list(itertools.combinations(vectors, 2))
    return float(np.mean([disagreement(a, b) for a, b in pairs])) if pairs else float("nan")


def split_variance(correct_disagreement: float, n: int) -> float:
    """The seed-to-seed variance a fixed split of ``n`` samples adds to measured accuracy, from
    the mean pairwise correctness disagreement D of two seeds: D / (2 n).  (For two networks
    a, b, Var(acc_a - acc_b) on the split has a split part D / n; half of it is each one's.)"""
    return correct_disagreement / (2.0 * n)


def sample_var(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.var(ddof=1)) if len(values) > 1 else float("nan")


def decompose(small: Sequence[float], big: Sequence[float], n_small: int, n_big: int,
              correct_disagreement: float) -> dict:
    """Split the seed-to-seed variance of accuracies on a small split (``small``, one per seed)
    into the networks' own and the split's, with the same networks' accuracies on a big split.

    ``var_net`` = Var(big) - D / (2 n_big) (clipped at 0); ``split_var`` = D / (2 n_small);
    ``split_share`` = split_var / (var_net + split_var) -- the model's prediction of the share;
    ``split_share_observed`` = 1 - var_net / Var(small) (noisy with few seeds); ``var_diff`` =
    Var(small - big), a direct estimate of split_var(n_small) + split_var(n_big)."""
    small, big = np.asarray(small, float), np.asarray(big, float)
    var_small, var_big = sample_var(small), sample_var(big)
    var_net = max(0.0, var_big - split_variance(correct_disagreement, n_big))
    split_var = split_variance(correct_disagreement, n_small)
    total = var_net + split_var
    return {
        "var_small": var_small,
        "var_big": var_big,
        "var_net": var_net,
        "split_var": split_var,
        "split_share": split_var / total if total > 0 else float("nan"),
        "split_share_observed": (1.0 - var_net / var_small) if var_small > 0 else float("nan"),
        "var_diff": sample_var(small - big),
        "std_small": math.sqrt(var_small) if var_small == var_small else float("nan"),
        "std_net": math.sqrt(var_net),
        "std_split": math.sqrt(split_var),
    }


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    r = np.empty(len(values), dtype=float)
    r[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        r[tied] = r[tied].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks)."""
    rx, ry = ranks(x), ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# ---------------------------------------------------------------------------------------------
# Extra splits from the same generator
# ---------------------------------------------------------------------------------------------

#: generation seed of the extra splits (the datasets use the package's 42)
EXTRA_GEN_SEED = 4242


def _generator_args(dataset: str) -> dict:
    from gp_activations import data as data_mod

    name = data_mod.get_dataset_info(dataset).name
    if name == "mnist1d_hard":
        return dict(data_mod.MNIST1D_HARD)
    if name == "mnist1d":
        return dict(num_samples=data_mod.MNIST1D_NUM_SAMPLES)
    raise SystemExit(f"noise.py: extra splits only for mnist1d and mnist1d_hard, not {dataset!r}")


def extra_splits(dataset: str, sizes: Sequence[int], gen_seed: int = EXTRA_GEN_SEED):
    """Fresh ``(x, y)`` splits of the given sizes from ``dataset``'s generator and noise
    settings (another generation seed), standardised with the original set's constants.
    Checks that those constants reproduce the cached arrays and that no row equals a row of
    the original (training, validation or test) set.  Returns (splits, info)."""
    import torch

    from gp_activations import data as data_mod

    started = time.perf_counter()
    gen = _generator_args(dataset)
    n_orig = gen.pop("num_samples")
    x, _y, x_test, _yt = data_mod._mnist1d_arrays(**_cache_args(dataset))
    original = np.concatenate([x, x_test])
    if data_mod.get_dataset_info(dataset).name == "mnist1d_hard":
        mean, std = data_mod._mnist1d_hard_norm()  # checked and cached by the data module
    else:
        raw, _ = data_mod.mnist1d_raw(n_orig, data_mod.MNIST1D_SEED, **gen)
        mean, std = raw.mean(), raw.std()
        again = ((raw - mean) / std).astype(np.float32)
        if not np.allclose(again, original, atol=1e-5):
            raise SystemExit("noise.py: the regenerated signals do not reproduce the cached dataset")
    total = int(sum(sizes))
    per_class = -(-total // 10)
    xs, ys = data_mod.mnist1d_raw(per_class * 10, gen_seed, **gen)
    xs = ((xs - mean) / std).astype(np.float32)[:total]
    ys = ys.astype(np.int64)[:total]
    seen = {row.tobytes() for row in original}
    clashes = sum(row.tobytes() in seen for row in xs)
    if clashes:
        raise SystemExit(f"noise.py: {clashes} extra samples equal original ones")
    out, start = [], 0
    for n in sizes:
        out.append((torch.tensor(xs[start:start + n, None, :]), torch.tensor(ys[start:start + n])))
        start += n
    info = {"gen_seed": gen_seed, "sizes": list(sizes), "generation_s": time.perf_counter() - started,
            "norm_mean": float(mean), "norm_std": float(std), "equal_to_original_rows": clashes}
    return out, info


def _cache_args(dataset: str) -> dict:
    from gp_activations import data as data_mod

    name = data_mod.get_dataset_info(dataset).name
    return dict(data_mod.MNIST1D_HARD) if name == "mnist1d_hard" else {}


# ---------------------------------------------------------------------------------------------
# Training with the project's train(), keeping the network
# ---------------------------------------------------------------------------------------------

#: the resnet1d search results of experiments/README.md used as "found" functions
FOUND = {
    # headline search's found #1: hard-swish with a learnable clip
    "hswish_clip": ("div(mul(x, min(relu(add(x, 3.0)), 6.0)), 6.0)", (8,)),
    # general-min #1 (multi-task search incl. resnet1d): x sinh(p sigmoid(x))
    "x_sinh_sigmoid": ("mul(x, sinh(sigmoid(x)))", (2,)),
}


def resolve(name: str):
    """A name of :data:`FOUND`, a zoo name, or ``"EXPR@i,j"`` (learnable scalars at i, j)."""
    from gp_activations import zoo
    from gp_activations.activation import Activation

    if name in FOUND:
        expr, params = FOUND[name]
        return Activation.from_string(expr, "pangaea", params)
    if "@" in name:
        expr, at = name.rsplit("@", 1)
        return Activation.from_string(expr.strip(), "pangaea",
                                      [int(i) for i in at.strip(" []").split(",") if i.strip()])
    return zoo.resolve(name)


class KeptModel:
    """A model callable for :func:`train` that builds the registered model ``name`` -- the same
    network ``model=name`` gives -- and keeps it, so it can be scored after training."""

    def __init__(self, name: str, in_channels: Optional[int]):
        self.name, self.in_channels, self.net = name, in_channels, None
        self.__name__ = name

    def __call__(self, act, num_classes: int = 10):
        from gp_activations import models as models_mod

        self.net = models_mod.build_model(self.name, act, num_classes=num_classes,
                                          in_channels=self.in_channels)
        return self.net


def predictions(net, x, batch_size: int = 1000) -> np.ndarray:
    """Predicted labels of ``net`` (eval mode, as train()'s evaluation: no autocast for 1-D)."""
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            out.append(net(x[s:s + batch_size]).argmax(1))
    net.train()
    return torch.cat(out).numpy().astype(np.int8)


def train_and_score(fn: str, dataset: str, model: str, config, seed: int, splits: dict):
    """One training with train(); the kept network's predictions on every split."""
    from gp_activations.train import get_dataset, train
    import torch

    ds = get_dataset(dataset, torch.device("cpu"))
    kept = KeptModel(model, ds.input_shape[0])
    rec = train(resolve(fn), dataset, kept, config, seed=seed, device="cpu", split="val")
    row = {"function": fn, "seed": seed, "status": rec.status, "reason": rec.reason,
           "train_wall_s": rec.wall_time, "train_s": rec.train_time,
           "val_acc_reported": rec.accuracy, "acc": {}, "eval_s": {}}
    preds = {}
    if rec.status != "ok":
        return row, preds
    for key, (x, y) in splits.items():
        t0 = time.perf_counter()
        p = predictions(kept.net, x, config.eval_batch_size)
        row["eval_s"][key] = time.perf_counter() - t0
        preds[key] = p
        row["acc"][key] = float(np.mean(p == y.numpy()))
    if abs(row["acc"]["val"] - rec.accuracy) > 1e-9:
        raise SystemExit(f"noise.py: the kept network's val accuracy {row['acc']['val']} != "
                         f"train()'s {rec.accuracy}: not the trained network")
    return row, preds


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist1d_hard")
    ap.add_argument("--model", default="resnet1d")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--functions", default="relu,silu,hswish_clip,x_sinh_sigmoid")
    ap.add_argument("--rank-functions", default="gelu,mish,softplus,elu,hardswish,swish_beta",
                    help="extra functions for the fitness-vs-test Spearman (1 seed each); "
                         "'' for none")
    ap.add_argument("--val-size", type=int, default=20_000)
    ap.add_argument("--test-size", type=int, default=50_000)
    ap.add_argument("--epochs", type=float, default=None, help="override the full schedule")
    ap.add_argument("--fitness-epochs", type=float, default=None, help="override the fitness one")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: cnn1d on mnist1d_hard, 1 epoch, 2 seeds, tiny splits")
    ap.add_argument("--out", default=None, help="JSON file for every number")
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset, args.model, args.seeds = "mnist1d_hard", "cnn1d", 2
        args.functions, args.rank_functions = "relu,silu", "gelu"
        args.val_size, args.test_size = 300, 500
        args.epochs, args.fitness_epochs = 1, 1
    for flag in ("seeds", "val_size", "test_size"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be a positive integer")

    import torch

    from gp_activations.train import default_config, get_dataset

    torch.set_num_threads(1)
    funcs = [f.strip() for f in args.functions.split(",") if f.strip()]
    rank_extra = [f.strip() for f in args.rank_functions.split(",") if f.strip()]
    for f in funcs + rank_extra:
        resolve(f)  # bad names fail before any training
    full = default_config(args.dataset, "train", args.model, threads=1)
    fitness = default_config(args.dataset, "fitness", args.model, threads=1)
    if args.epochs:
        full = full.replace(epochs=args.epochs)
    if args.fitness_epochs:
        fitness = fitness.replace(epochs=args.fitness_epochs)

    t_all = time.perf_counter()
    ds = get_dataset(args.dataset, torch.device("cpu"))
    (xv, yv), (xt, yt) = ds.split("val"), ds.split("test")
    extra, gen_info = extra_splits(args.dataset, [args.val_size, args.test_size])
    splits = {"val": (xv, yv), "test": (xt, yt), "val_big": extra[0], "test_big": extra[1]}
    sizes = {k: len(v[1]) for k, v in splits.items()}
    labels = {k: v[1].numpy() for k, v in splits.items()}
    print(f"splits: {sizes}; extra generated in {gen_info['generation_s']:.1f} s", flush=True)
    result = {"args": vars(args), "sizes": sizes, "generation": gen_info,
              "full_config": full.to_dict(), "fitness_config": fitness.to_dict(), "runs": [],
              "fitness_runs": []}

    def save():
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=1)

    correct: dict = {f: {k: [] for k in splits} for f in funcs}
    preds_all: dict = {f: {k: [] for k in splits} for f in funcs}
    for seed in range(args.seeds):  # seeds outer: a run cut short still has every function
        for fn in funcs:
            row, preds = train_and_score(fn, args.dataset, args.model, full, seed, splits)
            result["runs"].append(row)
            for k, p in preds.items():
                preds_all[fn][k].append(p)
                correct[fn][k].append(p == labels[k])
            accs = " ".join(f"{k} {100 * v:.2f}" for k, v in row["acc"].items())
            print(f"[{time.perf_counter() - t_all:6.0f}s] full {fn} seed {seed}: {row['status']} "
                  f"{accs} ({row['train_wall_s']:.1f} s)", flush=True)
            save()

    # the fitness proxy: 1 seed (0) of the fitness schedule on the validation split, every
    # function; full-schedule test accuracy: the seeds above, or seed 0 for the extra ones
    for fn in funcs + rank_extra:
        row, _ = train_and_score(fn, args.dataset, args.model, fitness, 0, splits)
        row["schedule"] = "fitness"
        result["fitness_runs"].append(row)
        print(f"[{time.perf_counter() - t_all:6.0f}s] fitness {fn}: {row['status']} "
              f"val {100 * row['acc'].get('val', float('nan')):.2f}", flush=True)
        save()
    for fn in rank_extra:
        row, _ = train_and_score(fn, args.dataset, args.model, full, 0, splits)
        result["runs"].append(row)
        accs = " ".join(f"{k} {100 * v:.2f}" for k, v in row["acc"].items())
        print(f"[{time.perf_counter() - t_all:6.0f}s] full {fn} seed 0: {row['status']} {accs}",
              flush=True)
        save()

    result["summary"] = summarise(result, funcs, rank_extra, correct, preds_all, sizes)
    result["total_s"] = time.perf_counter() - t_all
    save()
    print_tables(result, funcs)
    return 0


def summarise(result, funcs, rank_extra, correct, preds_all, sizes) -> dict:
    per_fn = {}
    for fn in funcs:
        rows = [r for r in result["runs"] if r["function"] == fn and r["status"] == "ok"]
        accs = {k: [r["acc"][k] for r in rows] for k in sizes}
        d_corr = {k: mean_pairwise_disagreement(correct[fn][k]) for k in sizes}
        d_pred = {k: mean_pairwise_disagreement(preds_all[fn][k]) for k in sizes}
        s = {"n_seeds": len(rows),
             "mean": {k: float(np.mean(v)) for k, v in accs.items()},
             "std": {k: math.sqrt(sample_var(v)) if len(v) > 1 else float("nan")
                     for k, v in accs.items()},
             "binomial_std": {k: binomial_std(float(np.mean(accs["test_big"])), n)
                              for k, n in sizes.items()},
             "disagreement_pred": d_pred, "disagreement_correct": d_corr,
             # D from the 50k split (the most precise), applied to every split's size
             "decomposition": {k: decompose(accs[k], accs["test_big"], sizes[k], sizes["test_big"],
                                            d_corr["test_big"])
                               for k in ("val", "test", "val_big")}}
        per_fn[fn] = s
    # pooled over functions: variances averaged (each function's own mean removed)
    pooled = {}
    for k in ("val", "test", "val_big"):
        ds_ = [per_fn[f]["decomposition"][k] for f in funcs if per_fn[f]["n_seeds"] > 1]
        if ds_:
            keys = ("var_small", "var_big", "var_net", "split_var", "var_diff")
            p = {key: float(np.mean([d[key] for d in ds_])) for key in keys}
            total = p["var_net"] + p["split_var"]
            p["split_share"] = p["split_var"] / total if total > 0 else float("nan")
            p["split_share_observed"] = 1 - p["var_net"] / p["var_small"] if p["var_small"] else float("nan")
            pooled[k] = p
    # fitness proxy vs full-schedule test accuracy
    names = [r["function"] for r in result["fitness_runs"] if r["status"] == "ok"]
    fit = {r["function"]: r["acc"]["val"] for r in result["fitness_runs"] if r["status"] == "ok"}
    fit_big = {r["function"]: r["acc"]["val_big"] for r in result["fitness_runs"] if r["status"] == "ok"}
    full_rows = [r for r in result["runs"] if r["status"] == "ok"]

    def full_mean(fn, key, seed0_only=False):
        v = [r["acc"][key] for r in full_rows if r["function"] == fn
             and (r["seed"] == 0 or not seed0_only)]
        return float(np.mean(v)) if v else float("nan")

    names = [n for n in names if not math.isnan(full_mean(n, "test"))]
    rank = {"functions": names, "fitness_val": [fit[n] for n in names],
            "fitness_val_big": [fit_big[n] for n in names],
            "full_test_mean": [full_mean(n, "test") for n in names],
            "full_test_big_mean": [full_mean(n, "test_big") for n in names],
            "full_test_seed0": [full_mean(n, "test", True) for n in names],
            "full_test_big_seed0": [full_mean(n, "test_big", True) for n in names]}
    if len(names) > 2:
        rank["spearman"] = {
            "fitness_val~full_test(mean)": spearman(rank["fitness_val"], rank["full_test_mean"]),
            "fitness_val~full_test_big(mean)": spearman(rank["fitness_val"], rank["full_test_big_mean"]),
            "fitness_val_big~full_test_big(mean)": spearman(rank["fitness_val_big"], rank["full_test_big_mean"]),
            "fitness_val~full_test(seed0)": spearman(rank["fitness_val"], rank["full_test_seed0"]),
            "fitness_val_big~full_test_big(seed0)": spearman(rank["fitness_val_big"], rank["full_test_big_seed0"]),
            "full_test~full_test_big(mean)": spearman(rank["full_test_mean"], rank["full_test_big_mean"]),
        }
    # cost of the evaluation passes, as a share of a training's time
    ok = [r for r in result["runs"] if r["status"] == "ok"]
    cost = {"train_wall_s_mean": float(np.mean([r["train_wall_s"] for r in ok])) if ok else float("nan"),
            "eval_s_mean": {k: float(np.mean([r["eval_s"][k] for r in ok])) for k in sizes} if ok else {}}
    return {"per_function": per_fn, "pooled": pooled, "rank": rank, "cost": cost}


def print_tables(result, funcs) -> None:
    s, sizes = result["summary"], result["sizes"]
    keys = list(sizes)
    print("\nAccuracy (%), mean ± std over seeds, the same networks on every split")
    print("| function | seeds | " + " | ".join(f"{k} (n={sizes[k]:,})" for k in keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for fn in funcs:
        p = s["per_function"][fn]
        cells = " | ".join(f"{100 * p['mean'][k]:.2f} ± {100 * p['std'][k]:.2f}" for k in keys)
        print(f"| {fn} | {p['n_seeds']} | {cells} |")
    print("\nbinomial std sqrt(p(1-p)/n) (points): " + ", ".join(
        f"{k} {100 * binomial_std(float(np.mean([s['per_function'][f]['mean']['test_big'] for f in funcs])), n):.2f}"
        for k, n in sizes.items()))
    print("\nPairwise disagreement between two seeds (%, test_big): predicted label / correctness")
    for fn in funcs:
        p = s["per_function"][fn]
        print(f"  {fn}: {100 * p['disagreement_pred']['test_big']:.2f} / "
              f"{100 * p['disagreement_correct']['test_big']:.2f}")
    print("\nDecomposition of the seed-to-seed std (points): std observed | networks' own | "
          "split's D/(2n) | split's share of the variance (model; observed)")
    for fn in funcs + ["pooled"]:
        for k in ("val", "test"):
            d = s["pooled"].get(k) if fn == "pooled" else s["per_function"][fn]["decomposition"][k]
            if not d:
                continue
            print(f"  {fn:>15} {k:>5}: {100 * math.sqrt(d['var_small']):.2f} | "
                  f"{100 * math.sqrt(d['var_net']):.2f} | {100 * math.sqrt(d['split_var']):.2f} | "
                  f"{100 * d['split_share']:.0f} %; {100 * d['split_share_observed']:.0f} %")
    r = s["rank"]
    if r.get("functions"):
        print("\nFitness proxy (1 seed, fitness schedule, val) vs full-schedule test accuracy")
        print("| function | fitness val | fitness val_big | full test | full test_big |")
        print("|---|---:|---:|---:|---:|")
        for i, fn in enumerate(r["functions"]):
            print(f"| {fn} | {100 * r['fitness_val'][i]:.2f} | {100 * r['fitness_val_big'][i]:.2f} | "
                  f"{100 * r['full_test_mean'][i]:.2f} | {100 * r['full_test_big_mean'][i]:.2f} |")
        for k, v in r.get("spearman", {}).items():
            print(f"  Spearman {k}: {v:.2f}")
    c = s["cost"]
    if c.get("eval_s_mean"):
        print(f"\nCost: training {c['train_wall_s_mean']:.1f} s; evaluation passes " + ", ".join(
            f"{k} {v:.2f} s" for k, v in c["eval_s_mean"].items())
            + f"; extra splits generated in {result['generation']['generation_s']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
