"""Reports of a run: plots, ``report.md``, and export of its winners.

``gp-activations report RUN`` writes into ``RUN/report/``:

* ``shapes.png``        the top-K functions on [-5, 5] (at initialisation and, where known, with
                        their learned scalars averaged over sites), ReLU for reference;
* ``fitness.png``       the fitness of every evaluated candidate in evaluation order with the
                        best-so-far line (and the best-so-far of each ``--compare`` run, e.g.
                        random search at the same budget);
* ``params_depth.png``  the learned scalars of the best function per activation site (how the
                        function specialises with depth);
* ``params_epochs.png`` the same scalars over the training epochs;
* ``report.md``         linking them, with the top functions, the final results table (after
                        ``gp-activations evaluate``) and the comparison table.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Optional, Sequence

from .activation import Activation
from .tables import Column, Table, code, function_latex, mean_std, number
from .errors import UserError
from .search.config import SearchConfig
from .search.ranking import flag_text, ranked_functions, skipped_note
from .search.store import RunStore
from .statistics import summarize


# ---------------------------------------------------------------------------------------------
# Reading a run
# ---------------------------------------------------------------------------------------------
def _ranked(store: RunStore, k: Optional[int] = None) -> list[dict]:
    cfg = store.config()
    top, _ = ranked_functions(store, k, cfg.get("variant_fitness", "best"),
                              cfg.get("allow_linear", False), race=True)
    if not top:
        raise UserError(f"{store.run_dir} has no finished candidates yet; run or resume the search "
                        f"first (gp-activations search --out {store.run_dir} --resume)")
    return top


def _activation(store: RunStore, cand) -> Activation:
    """A run's candidate as the search trained it (normalised where the run normalises)."""
    cfg = SearchConfig.from_dict(store.config(), where="stored config")
    return cfg.as_trained(Activation.from_string(cand.expression, cand.primitives, cand.params))


def learned_trajectory(store: RunStore, rank: int, cand) -> tuple[list, str]:
    """Per-epoch ``{site: {param: value}}`` of a function's training: the final evaluation's
    seed 0 when there is one (full schedule), else the search's fitness training."""
    protocol = report_protocol(store, own_only=True)  # a transfer model has other sites
    rows = [] if protocol is None else [
        r for r in store.final_trainings(protocol, status="done", labels=[f"found #{rank}"])
        if (r.expression, r.params) == (cand.expression, cand.params)]
    if rows and rows[0].metrics:
        traj = rows[0].metrics.get("param_trajectory") or []
        if traj:
            return traj, "final evaluation (seed 0)"
    return (cand.metrics or {}).get("param_trajectory") or [], "search fitness training"


def site_values(trajectory: list) -> list[dict]:
    """The last epoch's values, one dict per site in network order."""
    return list(trajectory[-1].values()) if trajectory else []


def mean_values(sites: list[dict]) -> dict:
    """Scalars averaged over sites (and channels): one representative function."""
    out = {}
    for name in (sites[0] if sites else {}):
        vals = []
        for site in sites:
            v = site[name]
            vals.extend(v if isinstance(v, list) else [v])
        out[name] = statistics.fmean(vals)
    return out


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def ranked_item(store: RunStore, rank: int) -> dict:
    """The run's rank-``rank`` function as ranked by the search table -- after a final race,
    the race's order -- (a
    :func:`ranked_functions` item: its best placement of learnable scalars is ``candidate``)."""
    if rank < 1:
        raise UserError(f"--rank must be >= 1, got {rank}")
    top = _ranked(store)
    if rank > len(top):
        raise UserError(f"{store.run_dir} has {len(top)} ranked functions; --rank {rank} does "
                        f"not exist")
    return top[rank - 1]


def activation_from_run(run_dir, rank: int = 1) -> Activation:
    """The rank-``rank`` function of a run with its best placement of learnable scalars: the
    function ``gp-activations export RUN --rank`` exports (:meth:`Activation.from_run`)."""
    store = RunStore.open(run_dir, readonly=True)
    try:
        return _activation(store, ranked_item(store, rank)["candidate"])
    finally:
        store.close()


def export_from_run(run_dir, rank: int = 1, fmt: str = "latex", with_learned: bool = False) -> str:
    """The rank-``rank`` function of a run as LaTeX, sympy, standalone torch code or JSON."""
    store = RunStore.open(run_dir, readonly=True)
    try:
        item = ranked_item(store, rank)
        cand = item["candidate"]
        act = _activation(store, cand)
        values = None
        if with_learned and act.slots:
            trajectory = learned_trajectory(store, rank, cand)[0]
            if not trajectory or not trajectory[-1]:
                raise UserError(f"no learned values recorded for rank {rank} of {run_dir}")
            # torch: every site's values under its name in the trained network, in network
            # order (the exported file's SITES / LEARNED); the other formats print one
            # function, the mean.
            named = trajectory[-1]
            values = named if fmt == "torch" else mean_values(list(named.values()))
    finally:
        store.close()
    if fmt == "json":
        data = json.loads(act.export("json", values))
        data["fitness"] = item["fitness"]
        return json.dumps(data, indent=2)
    return act.export(fmt, values)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def _mathtext(latex: str) -> str:
    """A LaTeX title matplotlib can render, or the plain text when mathtext can't."""
    from matplotlib.mathtext import MathTextParser

    text = f"${latex}$"
    try:
        MathTextParser("agg").parse(text)
        return text
    except Exception:  # noqa: BLE001 - fall back to text
        return latex


def plot_shapes(store: RunStore, path: Path, k: int = 4) -> None:
    import matplotlib.pyplot as plt
    import torch

    top = _ranked(store, k)
    n = len(top)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    x = torch.linspace(-5, 5, 401)
    for i, item in enumerate(top):
        ax = axes[i // cols][i % cols]
        cand = item["candidate"]
        act = _activation(store, cand)
        ax.plot(x, torch.relu(x), "--", color="0.6", label="ReLU")
        with torch.no_grad():
            ax.plot(x, act(x), lw=2, label="at initialisation")
            sites = site_values(learned_trajectory(store, i + 1, cand)[0])
            if sites:
                ax.plot(x, act(x, values=mean_values(sites)), lw=1.5,
                        label="learned scalars (mean over sites)")
        ax.set_title(f"#{i + 1} (fitness {item['fitness']:.4f}): " + _mathtext(function_latex(act)), fontsize=9)
        ax.set_xlabel("$x$")
        ax.set_ylabel("$f(x)$")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fitness_series(store: RunStore) -> list[float]:
    return [c.fitness if c.fitness is not None else float("nan") for c in store.trained_in_order()]


def at_chance(cand) -> bool:
    """A training stopped because its accuracy stayed at chance after the first epoch (it
    counts as done, with that accuracy as its fitness)."""
    return cand.status == "done" and ((cand.metrics or {}).get("status") == "chance"
                                      or "at chance level" in (cand.error or ""))


def _best_so_far(values: Sequence[float]) -> list[float]:
    out, best = [], float("nan")
    for v in values:
        if not math.isnan(v) and (math.isnan(best) or v > best):
            best = v
        out.append(best)
    return out


def plot_fitness(store: RunStore, path: Path, compare: Sequence[RunStore] = ()) -> dict:
    """Every trained candidate's fitness in order of completion; the failed ones and those
    stopped at chance as red / orange crosses along the bottom edge (counted in the legend),
    not as points at chance level that would stretch the axis."""
    import matplotlib.pyplot as plt

    trained = store.trained_in_order()
    values = _fitness_series(store)
    order = range(1, len(values) + 1)
    failed = [i for i, c in zip(order, trained) if c.status != "done" or c.fitness is None]
    chance = [i for i, c in zip(order, trained) if i not in set(failed) and at_chance(c)]
    marked = set(failed) | set(chance)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter([i for i in order if i not in marked],
               [v for i, v in zip(order, values) if i not in marked], s=8, alpha=0.5,
               label="candidate fitness")
    strategy = store.config().get("strategy", "evolution")
    line = [float("nan") if i in marked else v for i, v in zip(order, values)]
    ax.plot(order, _best_so_far(line), lw=2, label=f"best so far ({strategy})")
    for other in compare:
        ov = _fitness_series(other)
        ax.plot(range(1, len(ov) + 1), _best_so_far(ov), lw=1.5, ls="--",
                label=f"best so far ({other.config().get('strategy', '?')}, {other.run_dir.name})")
    finite = [v for i, v in zip(order, values) if i not in marked and not math.isnan(v)]
    finite += [v for o in compare for v in _best_so_far(_fitness_series(o)) if not math.isnan(v)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 0.02), min(1.0, max(finite) + 0.02))
    # along the bottom edge, whatever the axis' range: axes coordinates in y
    bottom = ax.get_xaxis_transform()
    if failed:
        ax.scatter(failed, [0.02] * len(failed), marker="x", color="red", s=25,
                   transform=bottom, clip_on=False, label=f"failed ({len(failed)})")
    if chance:
        ax.scatter(chance, [0.02] * len(chance), marker="x", color="darkorange", s=25,
                   transform=bottom, clip_on=False, label=f"at chance ({len(chance)})")
    ax.set_xlabel("evaluation (in order of completion)")
    ax.set_ylabel("fitness (validation accuracy)")
    ax.set_title("Fitness of every evaluated candidate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"failed": len(failed), "chance": len(chance)}


def _scalar(v) -> float:
    return statistics.fmean(v) if isinstance(v, list) else float(v)


def plot_params(store: RunStore, depth_path: Path, epochs_path: Path) -> Optional[str]:
    """Learned scalars of the best function that has any; returns a caption or None."""
    import matplotlib.pyplot as plt

    for rank, item in enumerate(_ranked(store, 10), 1):
        cand = item["candidate"]
        act = _activation(store, cand)
        traj, source = learned_trajectory(store, rank, cand)
        if act.slots and traj:
            break
    else:
        return None
    names = act.slot_names
    sites = list(traj[-1].keys())
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        ax.plot(range(len(sites)), [_scalar(traj[-1][s][name]) for s in sites], "o-", label=name)
    ax.set_xticks(range(len(sites)), sites, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("activation site (input → output)")
    ax.set_ylabel("learned value (mean over channels)")
    ax.set_title(f"#{rank}: " + _mathtext(function_latex(act)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(depth_path, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes[0], names):
        for i, site in enumerate(sites):
            ax.plot(range(len(traj)), [_scalar(epoch[site][name]) for epoch in traj],
                    color=cmap(i / max(1, len(sites) - 1)), label=site if len(sites) <= 8 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(f"{name} (mean over channels)")
        ax.set_title(f"{name} per site over training (dark = early layers)", fontsize=9)
        ax.grid(alpha=0.3)
        if len(sites) <= 8:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(epochs_path, dpi=110)
    plt.close(fig)
    return f"#{rank} `{act}`, from the {source}"


# ---------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------
def report_protocol(store: RunStore, own_only: bool = False) -> Optional[str]:
    """The final evaluation to report: the latest on the run's own model and dataset, else
    (unless ``own_only``) the latest transfer evaluation; None if there is none."""
    recorded = store.get_meta("final_protocols", {})
    latest = store.final_protocols_by_recency()
    own = [p for p in latest if recorded.get(p, {}).get("own")]
    if own:
        return own[0]
    return None if own_only or not latest else latest[0]


def _results_tables(store: RunStore, cfg: SearchConfig) -> list:
    """[(rows, protocol described)]: the final evaluation to report -- for a multi-task run the
    latest of each task, in the run's task order."""
    if not cfg.multi_task:
        rows, described = _results_rows(store)
        return [(rows, described)] if rows else []
    latest = store.final_protocols_by_recency()
    out = []
    for task in cfg.task_list():
        mine = [p for p in latest if (json.loads(p)["dataset"], json.loads(p)["model"])
                == (task["dataset"], task["model"])]
        if mine:
            rows, described = _results_rows(store, mine[0])
            out.append((rows, described))
    return out


def _results_rows(store: RunStore, protocol: Optional[str] = None):
    from .evaluate import summarize

    protocol = protocol or report_protocol(store)
    if protocol is None:
        return None, None
    recorded = store.get_meta("final_protocols", {}).get(protocol, {})
    labels = recorded.get("labels") or store.final_labels(protocol)
    described = {**json.loads(protocol), "_test_split": recorded.get("test_split")}
    return summarize(store, protocol, labels, recorded.get("seeds")), described


def comparison_table(stores: Sequence[RunStore]) -> list[str]:
    """Markdown: each run's best fitness, then mean ± std per strategy (the ablation)."""
    runs = Table(Column("run"), Column("strategy"), Column("seed", ">"),
                 Column("trainings", ">"), Column("best fitness", ">"))
    by_strategy: dict = {}
    for s in stores:
        cfg = s.config()
        best = max((v for v in _fitness_series(s) if not math.isnan(v)), default=float("nan"))
        by_strategy.setdefault(cfg.get("strategy"), []).append(best)
        runs.add(code(s.run_dir.name), cfg.get("strategy"), cfg.get("seed"),
                 s.count_trainings(), number(best))
    strategies = Table(Column("strategy"), Column("runs", ">"),
                       Column("best fitness, mean ± std", ">"))
    for strategy, values in by_strategy.items():
        summary = summarize(values)
        strategies.add(strategy, len(values), mean_std(summary.mean, summary.std))
    return ["### Comparison at the same budget", "", runs.markdown(), "",
            strategies.markdown(), ""]


def surrogate_section(store: RunStore) -> list:
    """Predicted vs measured fitness of the candidates the surrogate scored before training."""
    from .search.surrogate import spearman

    pairs = [(c.predicted, c.fitness) for c in store.candidates(plain=True, trained=True)
             if c.predicted is not None]
    if not pairs:
        return []
    done = [(p, f) for p, f in pairs if f is not None]
    rho = spearman([p for p, _ in done], [f for _, f in done])
    mae = statistics.fmean(abs(p - f) for p, f in done) if done else float("nan")
    return ["## Surrogate", "",
            f"{len(pairs)} trained functions had a prediction made before their training "
            f"({len(pairs) - len(done)} of them failed).  Predicted vs measured fitness: "
            f"Spearman {'n/a' if rho is None else f'{rho:.2f}'}, mean absolute error "
            f"{mae:.4f}.  (Only the functions the surrogate chose were trained, so this is its "
            f"accuracy among its own picks.)", ""]


def report_dir(run_dir) -> Path:
    """``RUN/report``, made; one line (before any plot is drawn) if it cannot be written -- a
    file in its place, a read-only run directory."""
    from .errors import check_writable, os_error_message

    out = Path(run_dir) / "report"
    try:
        check_writable(out, "dir", "the report directory",
                       fix=f"the report is written into the run; to report a run on read-only "
                           f"media, copy it (cp -r {run_dir} /tmp/) and report the copy")
    except UserError as exc:
        raise UserError(f"report: {exc}") from None
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"report: {os_error_message(exc, out, verb='create')}") from None
    return out


def write_report(run_dir, k: int = 4, compare: Sequence = ()) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    if k < 1:  # top_functions(0) would mean "all" and a negative k "all but the last"
        raise UserError(f"--top must be >= 1, got {k}")
    store = RunStore.open(run_dir, readonly=True)  # read-only: a failed write cannot touch it
    others = [RunStore.open(c, readonly=True) for c in compare]
    try:
        top = _ranked(store, k)
        out = report_dir(run_dir)
        cfg = SearchConfig.from_dict(store.config(), where="stored config")
        plot_shapes(store, out / "shapes.png", k)
        marked = plot_fitness(store, out / "fitness.png", others)
        params_caption = plot_params(store, out / "params_depth.png", out / "params_epochs.png")
        lines = (_summary_section(store, cfg, run_dir) + _top_section(store, cfg, top, k)
                 + _fitness_section(marked)
                 + (comparison_table([store, *others]) if others else [])
                 + surrogate_section(store) + _params_section(params_caption)
                 + _final_sections(store, cfg, run_dir) + _transfer_section(run_dir))
        path = out / "report.md"
        path.write_text("\n".join(lines))
        return path
    finally:
        for s in (store, *others):
            s.close()


def _summary_section(store: RunStore, cfg: SearchConfig, run_dir) -> list:
    """The title and one paragraph: how the run searched, where, and its counts."""
    from .search.monitor import method_text

    counts = store.status_counts()
    tasks = cfg.task_list() if cfg.multi_task else []
    where = (" + ".join(f"**{t['name']}**" for t in tasks) if tasks
             else f"**{cfg.dataset}** / {cfg.model or 'default model'}")
    return [f"# Search report: `{Path(run_dir).name}`", "",
            f"Search: {method_text(cfg)}; on {where}, search space "
            f"`{cfg.primitives}`, population {cfg.population}"
            + (f", {cfg.generations} generations" if cfg.generations is not None else "")
            + (f", budget {cfg.budget} trainings" if cfg.budget else "") + ".  "
            f"{counts['done']} candidates trained, {counts['failed']} failed, "
            f"{counts['rejected']} rejected before training, "
            f"{counts['duplicates'] + store.get_meta('dedup_hits', 0)} duplicates skipped.", ""]


def _top_section(store: RunStore, cfg: SearchConfig, top: list, k: int) -> list:
    """The top functions' table (a multi-task run's with a column per task), ReLU's fitness
    (or its accuracy per task), the affine functions left out, the shapes plot."""
    tasks = cfg.task_list() if cfg.multi_task else []
    table = Table(Column("rank", ">"), Column("fitness", ">"),
                  *(Column(t["name"], ">") for t in tasks), Column("function"), Column("LaTeX"))
    for i, item in enumerate(top, 1):
        act = _activation(store, item["candidate"])
        accs = {t["task"]: t.get("accuracy")
                for t in (item["candidate"].metrics or {}).get("tasks", [])} if tasks else {}
        table.add(i, number(item["fitness"]), *(number(accs.get(t["name"])) for t in tasks),
                  code(act) + flag_text(item), f"${function_latex(act)}$")
    if tasks:
        title = (f"## Top functions (search fitness = the {cfg.task_aggregate} over tasks of "
                 f"validation accuracy / ReLU's, after brief training)")
        refs = {t: r.accuracy for t, r in store.task_runs(0).items()}
        after = ["ReLU's validation accuracy per task (the normaliser): " + ", ".join(
            f"{t['name']} {refs[i]:.4f}" for i, t in enumerate(tasks) if refs.get(i) is not None)
            + "."]
    else:  # as the search's table prints it: ReLU's fitness under the same budget
        title = "## Top functions (search fitness = validation accuracy after brief training)"
        relu = store.relu_fitness()
        table.add("—", number(relu), "`relu(x)` (ReLU under the same budget)",
                  r"$\max\left(0, x\right)$")
        after = ["ReLU under the same budget: fitness "
                 + ("n/a (this run did not train plain `relu(x)`)" if relu is None
                    else f"{relu:.4f}") + "."]
    _, skipped = ranked_functions(store, k, cfg.variant_fitness, cfg.allow_linear)
    return ([title, "", table.markdown(), "", *after]
            + (["", f"Note: {skipped_note(skipped)}."] if skipped else [])
            + ["", "![shapes of the top functions](shapes.png)", ""])


def _fitness_section(marked: dict) -> list:
    lines = ["## Fitness over the run", "", "![fitness of every candidate](fitness.png)", ""]
    if marked["failed"] or marked["chance"]:
        lines += [f"Crosses along the bottom: {marked['failed']} failed trainings (red) and "
                  f"{marked['chance']} stopped at chance level after the first epoch (orange); "
                  f"not plotted at a fitness.", ""]
    return lines


def _params_section(caption: Optional[str]) -> list:
    if not caption:
        return []
    return ["## Learned parameters", "", f"{caption}.", "",
            "![learned scalars per site](params_depth.png)", "",
            "![learned scalars over epochs](params_epochs.png)", ""]


def _final_sections(store: RunStore, cfg: SearchConfig, run_dir) -> list:
    """The final evaluation's table (a multi-task run: one per task), or how to run it."""
    from .evaluate import markdown_table, reference_title

    tables = _results_tables(store, cfg)
    if not tables:
        return ["## Final evaluation", "", f"Not run yet: `gp-activations evaluate {run_dir}`.",
                ""]
    lines = []
    for rows, protocol in tables:
        test_split = protocol.pop("_test_split", None) or "the dataset's test split"
        title = (f"## Final evaluation on {protocol['dataset']} / {protocol['model']} (test set)"
                 if cfg.multi_task else "## Final evaluation (test set)")
        lines += [title, "",
                  f"{protocol['dataset']} / {protocol['model'] or 'default model'}, "
                  f"{protocol['epochs']:g} epochs; mean ± std over seeds; p: Welch's t-test vs "
                  f"{reference_title(rows)}.  Measured on the test split ({test_split}), which the search never "
                  f"used: its fitness is validation accuracy.", "", markdown_table(rows), ""]
    return lines


def _transfer_section(run_dir) -> list:
    transfer = Path(run_dir) / "transfer.md"
    if not transfer.is_file():  # written by `gp-activations transfer` over this run (and others)
        return []
    body = transfer.read_text().split("\n", 1)[1].strip()
    return ["## Transfer (this run's functions and others' on every task)", "", body, ""]
