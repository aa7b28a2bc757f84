"""Does the search beat random search, and what do halving, the surrogate and a screen buy?

    python benchmarks/search_efficiency.py                       # 20 seeds per strategy
    python benchmarks/search_efficiency.py --seeds 3 --budget 48 # a quick look
    python benchmarks/search_efficiency.py --table benchmarks/tabular/mnist1d_hard_resnet1d.csv \
        --budget 120 --plot benchmarks/search_efficiency_resnet1d.png

Every strategy runs the real search -- strategy, screening, dedup, store, halving, surrogate
-- on a tabular benchmark (default ``benchmarks/tabular/mnist1d_cnn1d.csv``, ``lookup``): each
"training" is read from the table, which real trainings filled (its sidecar names the dataset,
model and fitness budget).  Cost is counted in full fitness trainings: a halving rung of 4 of
the 12 epochs costs 1/3 (the halving strategies run only on a table whose rung column is
full).  Printed: for each strategy the best full-budget fitness found, mean ± std over search
seeds, at several costs; Mann-Whitney p-values against random and against plain evolution at
the full budget; the cost at which each strategy's mean best reaches plain evolution's final
mean; the surrogate's Spearman on held-out functions of the table; and, where the table has a
``test`` column (the full schedule), what a final race's entrants would be: the fitness's top 3
or the best 3 of a screen of the top 20 by their full-schedule accuracy.  Writes ``--plot``
(best so far vs cost, mean ± std band).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "benchmarks" / "tabular" / "mnist1d_cnn1d.csv"
PRIMITIVES = ROOT / "benchmarks" / "tabular" / "primitives.py"

#: Functions confirmed above SiLU on fresh seeds (50,000 test samples), per table.
WINNERS = {"mnist1d_hard_resnet1d": ["sub(sigmoid(x), softplus(x))", "softplus(relu(x))"]}

STRATEGIES = {
    "random": dict(strategy="random"),
    "evolution": dict(strategy="evolution"),
    "evolution+halving": dict(strategy="evolution", fidelity="halving", eta=3.0),
    "evolution+surrogate": dict(strategy="evolution", surrogate="forest"),
    "evolution+halving+surrogate": dict(strategy="evolution", fidelity="halving", eta=3.0,
                                        surrogate="forest"),
}


def table_meta(table) -> dict:
    """The table's sidecar: its dataset, model and columns."""
    import json

    return json.loads(Path(table).with_suffix(".json").read_text())


def fitness_epochs(table) -> float:
    return float(table_meta(table)["columns"]["fitness"]["epochs"])


def has_full_rung_column(table) -> bool:
    """Whether halving's first rung (the second column) is trained for every function."""
    meta = table_meta(table)
    rung = list(meta["columns"])[1]
    cells = meta.get("partial", {}).get("cells")
    return cells is None or cells.get(rung, 0) >= meta.get("partial", {}).get("of", 0)


def _config(table, budget: float, seed: int, extra: dict):
    from gp_activations.search import SearchConfig

    meta = table_meta(table)
    # the search space is the table's: its operators, trees of height <= 2 (see primitives.py)
    base = dict(dataset=meta["dataset"], model=meta["model"], primitives=str(PRIMITIVES),
                lookup=str(table), max_height=2, init_shapes=["u(u(x))", "b(u(x),u(x))"],
                init_zoo=False, population=16, generations=None, param_variants=0,
                executor="serial", seed=seed, train={"epochs": fitness_epochs(table)},
                temperature=0.02, elitism=2)
    base.update(extra)
    if base.get("fidelity") == "halving":  # rung 0 costs 1/3, a third of it goes on: 2/3 each
        base["budget"] = int(round(budget * 1.5))
    else:
        base["budget"] = int(budget)
    return SearchConfig(**base)


def trajectory(run_dir, full_epochs: float = 12.0) -> list[tuple[float, float]]:
    """[(cumulative cost, best full-budget fitness so far)] of a finished run, in run order."""
    from gp_activations.search.store import RunStore

    store = RunStore.open(run_dir, readonly=True)
    try:
        rungs = store.rung_runs()
        if rungs:
            events = sorted(rungs, key=lambda r: (r.finished_at or 0, r.candidate_id, r.rung))
            steps = [((r.epochs or 0) / full_epochs,
                      r.accuracy if r.status == "done" and math.isclose(r.epochs, full_epochs) else None)
                     for r in events]
        else:
            steps = [(1.0, c.fitness) for c in store.trained_in_order()]
    finally:
        store.close()
    out, cost, best = [], 0.0, float("-inf")
    for c, value in steps:
        cost += c
        if value is not None:
            best = max(best, value)
        out.append((cost, best))
    return out


def best_at(traj, cost: float) -> float:
    value = float("nan")
    for c, b in traj:
        if c > cost + 1e-9:
            break
        value = b
    return value


def run_strategies(table, budget: float, seeds: int, work: Path, names) -> dict:
    from gp_activations.search import run_search

    out = {}
    for name in names:
        out[name] = []
        started = time.time()
        for seed in range(seeds):
            run_dir = work / f"{name}-{seed}"
            run_search(_config(table, budget, seed, STRATEGIES[name]), out=run_dir, progress=False)
            out[name].append(trajectory(run_dir, fitness_epochs(table)))
        print(f"  {name}: {seeds} searches in {time.time() - started:.1f} s", flush=True)
    return out


def race_entrants(run_dir, table, k: int = 3, screen: int = 20) -> tuple[list, list]:
    """A finished search's final-race entrants (expressions) two ways: its top ``k`` by fitness,
    and the best ``k`` of its top ``screen`` by the table's ``test`` column (the full schedule,
    one seed: what a screen trains; only functions with one are picked -- the table has it for
    its best 100 by fitness)."""
    from gp_activations.search.ranking import ranked_functions
    from gp_activations.search.screening import function_key
    from gp_activations.search.store import RunStore

    store = RunStore.open(run_dir, readonly=True)
    try:
        ranked = [i["candidate"] for i in ranked_functions(store, screen)[0]]
    finally:
        store.close()
    keys = [function_key(_activation(c.expression)) for c in ranked]
    tests = [table.rows.get(key, {}).get("test") for key in keys]
    order = sorted((i for i in range(len(ranked)) if tests[i] is not None and tests[i] == tests[i]),
                   key=lambda i: -tests[i])
    by_fitness = [table.expressions.get(key, c.expression) for key, c in zip(keys, ranked)][:k]
    by_screen = [table.expressions.get(keys[i], ranked[i].expression) for i in order[:k]]
    return by_fitness, by_screen


def _activation(expression):
    from gp_activations.activation import Activation

    return Activation.from_string(expression, str(PRIMITIVES))


def screen_report(table_path, work: Path, seeds: int, winners, k: int = 3,
                  screen: int = 20) -> str:
    """How often a final race's entrants hold a function confirmed above SiLU (``winners``:
    rechecked on fresh seeds and 50,000 test samples, not on the column the screen picks by),
    by fitness or by a screen, over plain evolution's searches."""
    from gp_activations.search.screening import function_key
    from gp_activations.tabular import load_table

    table = load_table(table_path)
    confirmed = {table.expressions[function_key(_activation(w))] for w in winners}
    hits = {"fitness": 0, "screen": 0}
    for seed in range(seeds):
        entrants = dict(zip(("fitness", "screen"),
                            race_entrants(work / f"evolution-{seed}", table, k, screen)))
        for how, names in entrants.items():
            hits[how] += bool(confirmed & set(names))
    return "\n".join(
        f"  entrants = {label:42s} hold a confirmed winner in {hits[how]:2d} of {seeds} searches"
        for how, label in (("fitness", f"top {k} by fitness"),
                           ("screen", f"best {k} of a screen of the top {screen}")))


def surrogate_spearman(table_path, splits: int = 5) -> tuple[list, float]:
    """Spearman of the forest surrogate on held-out halves of the table (fitness column)."""
    from gp_activations.activation import Activation
    from gp_activations.search.surrogate import NetworkProbe, Surrogate, spearman
    from gp_activations.tabular import load_table

    table = load_table(table_path)
    items = [(key, table.expressions[key], row["fitness"]) for key, row in table.rows.items()
             if row.get("fitness") is not None]
    acts = {key: Activation.from_string(expr, "pangaea") for key, expr, _ in items}
    surrogate = Surrogate("forest", NetworkProbe(table.dataset, table.model))
    started = time.time()
    for key, _, _ in items:
        surrogate.features(acts[key], key)
    per_function = (time.time() - started) / len(items)
    values = []
    for split in range(splits):
        rng = random.Random(split)
        order = items[:]
        rng.shuffle(order)
        half = len(order) // 2
        train, test = order[:half], order[half:]
        fit = [None if math.isnan(v) else v for _, _, v in train]
        surrogate.fit([acts[k] for k, _, _ in train], fit, [k for k, _, _ in train])
        pred = surrogate.predict([acts[k] for k, _, _ in test], [k for k, _, _ in test])
        floor = min(v for _, _, v in items if not math.isnan(v))
        truth = [floor if math.isnan(v) else v for _, _, v in test]
        values.append(spearman(list(pred), truth))
    return values, per_function


def mannwhitney(a, b) -> float:
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(a, b, alternative="greater").pvalue)


def plot(results: dict, path: Path, budget: float, title: str = "MNIST-1D / cnn1d") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(1, budget, 100)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, trajs in results.items():
        curves = np.array([[best_at(t, c) for c in grid] for t in trajs], dtype=float)
        curves[~np.isfinite(curves)] = np.nan  # no full-budget result yet (halving's first rung)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
        ax.plot(grid, mean, label=f"{name} ({len(trajs)} seeds)")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("cost (full fitness trainings)")
    ax.set_ylabel("best fitness so far (validation accuracy)")
    ax.set_title(f"Search efficiency on the {title} tabular benchmark")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    early = [best_at(t, budget / 4) for ts in results.values() for t in ts]
    early = [v for v in early if math.isfinite(v)]
    final = [best_at(t, budget) for ts in results.values() for t in ts]
    if early:
        ax.set_ylim(min(early) - 0.005, max(v for v in final if math.isfinite(v)) + 0.003)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=float, default=160, help="cost per search, in full trainings")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "search_efficiency.png")
    parser.add_argument("--no-surrogate-check", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("gp_activations").setLevel(logging.WARNING)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if not has_full_rung_column(args.table):
        names = [n for n in names if STRATEGIES[n].get("fidelity") != "halving"]
        print("the table's rung column is not full: the halving strategies are left out")
    winners = WINNERS.get(args.table.stem, [])
    from gp_activations.tabular import load_table

    table = load_table(args.table)
    fitness = [r["fitness"] for r in table.rows.values() if r.get("fitness") is not None
               and not math.isnan(r["fitness"])]
    print(f"table: {args.table.name}, {len(table)} functions, fitness max {max(fitness):.4f}, "
          f"top 1 % >= {sorted(fitness)[-max(1, len(fitness) // 100)]:.4f}, median "
          f"{statistics.median(fitness):.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        results = run_strategies(args.table, args.budget, args.seeds, Path(tmp), names)
        if winners and "evolution" in names:
            screen = screen_report(args.table, Path(tmp), args.seeds, winners)
            print(f"\na final race's entrants after plain evolution (the table's test column "
                  f"as the screen's one full-schedule seed; confirmed winners: "
                  f"{', '.join(winners)}):\n{screen}")
    costs = [c for c in (args.budget / 8, args.budget / 4, args.budget / 2, args.budget)]
    print(f"\nbest full-budget fitness found, mean ± std over {args.seeds} search seeds, by cost:")
    print(f"{'strategy':28s}" + "".join(f"{c:>16.0f}" for c in costs))
    finals = {}
    for name, trajs in results.items():
        cells = []
        for c in costs:
            values = [best_at(t, c) for t in trajs]
            values = [v for v in values if math.isfinite(v)]
            cells.append(f"{statistics.fmean(values):.4f}±{statistics.pstdev(values):.4f}"
                         if values else "n/a")
        finals[name] = [best_at(t, args.budget) for t in trajs]
        print(f"{name:28s}" + "".join(f"{c:>16s}" for c in cells))
    print("\nat the full budget (one-sided Mann-Whitney U):")
    for name in finals:
        line = f"  {name:28s}"
        if "random" in finals and name != "random":
            line += f" p(> random) = {mannwhitney(finals[name], finals['random']):.3g}"
        if "evolution" in finals and name not in ("random", "evolution"):
            line += f"   p(> evolution) = {mannwhitney(finals[name], finals['evolution']):.3g}"
        print(line)
    if "evolution" in results:
        target = statistics.fmean(finals["evolution"])
        print(f"\ncost to reach plain evolution's final mean best ({target:.4f}):")
        for name, trajs in results.items():
            grid = [args.budget * i / 160 for i in range(1, 161)]
            reached = next((c for c in grid if statistics.fmean(
                [best_at(t, c) if math.isfinite(best_at(t, c)) else 0.0 for t in trajs]) >= target), None)
            print(f"  {name:28s} " + ("not reached" if reached is None else
                                       f"{reached:.0f} trainings ({reached / args.budget:.2f} of the budget)"))
    meta = table_meta(args.table)
    plot(results, args.plot, args.budget, f"{meta['dataset']} / {meta['model']}")
    print(f"\nplot: {args.plot}")
    if not args.no_surrogate_check:
        values, per_function = surrogate_spearman(args.table)
        print(f"\nsurrogate (forest; probe + network-at-init features, {per_function * 1000:.1f} ms "
              f"per function) Spearman on held-out halves of the table: "
              + ", ".join(f"{v:.3f}" for v in values) + f"; mean {statistics.fmean(values):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
