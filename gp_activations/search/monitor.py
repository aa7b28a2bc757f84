"""What a running search shows: progress lines, TensorBoard, and ``gp-activations status``.

The driver reports four events to a :class:`Monitor` (made by :func:`make_monitor`):

* ``generation_created(generation, n_new, n_to_train)`` -- a generation's candidates are stored;
* ``candidate_scored(row, score)`` -- a candidate's result is committed (``row`` the store's
  record after the commit);
* ``generation_finished(generation, scored, survivors, best)`` -- survivors chosen;
* ``close()`` -- the search stops (finished, interrupted or failed).

The monitor advances the progress bar (:mod:`gp_activations.progress`: a bar on a terminal,
plain lines with an ETA elsewhere) and, with ``tensorboard_dir``, writes TensorBoard event
files: per generation the best and median fitness of the generation's trained candidates and
the best so far, the candidates' counts by status and the failures by reason, the current top
functions' shapes (a figure of f(x) on [-5, 5]) and their LaTeX; per result the candidate's
fitness.  A failure of TensorBoard's writer (a full disk) is logged once and turns TensorBoard
off; it never stops the search.

:func:`status_text` is ``gp-activations status RUN``: a run's progress, best functions and
failures, read from its store read-only -- safe next to the running search.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import UserError
from ..tables import Column, Table, code, failure_lines, function_latex, number
from .config import SearchConfig
from .store import RunStore, Status

log = logging.getLogger("gp_activations.search")

TENSORBOARD_INSTALL = "pip install tensorboard  (or pip install 'gp-activations[tensorboard]')"


# ---------------------------------------------------------------------------------------------
# How a run searches, in words (status, report.md)
# ---------------------------------------------------------------------------------------------
def method_text(cfg: SearchConfig) -> str:
    """``evolution, successive halving (rungs of 4 and 12 epochs, eta 3), forest surrogate``:
    the strategy, the fidelity and the surrogate of a run."""
    if cfg.fidelity == "halving":
        try:
            rungs = cfg.rung_list()
            parts = [f"{r['epochs']:g}" + (f" x {r['seeds']} seeds" if r["seeds"] > 1 else "")
                     for r in rungs]
            fidelity = (f"successive halving ({len(rungs)} rungs: "
                        f"{', '.join(parts)} epochs; eta {cfg.eta:g})")
        except (UserError, KeyError, TypeError, ValueError):  # an unknown dataset's presets
            fidelity = f"successive halving (eta {cfg.eta:g})"
    elif cfg.fitness or cfg.multi_task:
        fidelity = "full fidelity"
    else:
        try:
            fidelity = f"full fidelity ({cfg.train_config().epochs:g} epochs per candidate)"
        except (UserError, KeyError, TypeError, ValueError):
            fidelity = "full fidelity"
    surrogate = f"{cfg.surrogate} surrogate" if cfg.surrogate else "no surrogate"
    lookup = f"; fitness looked up in `{Path(cfg.lookup).name}`" if cfg.lookup else ""
    return f"{cfg.strategy}, {fidelity}, {surrogate}{lookup}"


def _config(store: RunStore) -> SearchConfig:
    return SearchConfig.from_dict(store.config(), where=f"{store.run_dir} stored config")


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------
def check_tensorboard_dir(path) -> Path:
    """One line now (a :class:`UserError`) if TensorBoard is not installed or ``path`` cannot
    be written as a directory; returns the path."""
    from ..errors import check_writable

    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError(f"--tensorboard needs the tensorboard package, which is not installed: "
                        f"{TENSORBOARD_INSTALL}") from None
    check_writable(path, "dir", "--tensorboard", fix="choose a --tensorboard directory on "
                   "writable storage")
    return Path(path)


def _median(values):
    return statistics.median(values) if values else None


class TensorBoardLog:
    """The TensorBoard side of a monitor: one SummaryWriter in ``log_dir``."""

    def __init__(self, log_dir, store: RunStore, top: int = 3):
        from torch.utils.tensorboard import SummaryWriter

        self.store, self.top = store, top
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.config = _config(store)
        self.writer.add_text("run", f"`{store.run_dir}`: {method_text(self.config)} on "
                             f"{self.config.dataset}", 0)

    def candidate_scored(self, row, finished: int) -> None:
        if row.fitness is not None:
            self.writer.add_scalar("candidate/fitness", row.fitness, finished)

    def generation_finished(self, generation: int) -> None:
        store, w = self.store, self.writer
        fitness = generation_fitness(store, generation)
        if fitness:
            w.add_scalar("fitness/best", max(fitness), generation)
            w.add_scalar("fitness/median", _median(fitness), generation)
        best = store.best_fitness()
        if best is not None:
            w.add_scalar("fitness/best_so_far", best, generation)
        relu = store.relu_fitness()
        if relu is not None:
            w.add_scalar("fitness/relu", relu, generation)
        counts = store.status_counts()
        for status in ("done", "failed", "rejected"):
            w.add_scalar(f"candidates/{status}", counts[status], generation)
        w.add_scalar("candidates/trainings", store.count_trainings(), generation)
        reasons = store.failure_reasons()
        failures = Table(Column("candidates", ">"), Column("reason"))
        for reason, n in reasons:
            failures.add(n, reason.replace("|", "/"))
        w.add_text("failures", failures.markdown() if reasons else "no failures", generation)
        self._top_functions(generation)
        w.flush()

    def _top_functions(self, generation: int) -> None:
        from .ranking import ranked_functions

        top, _ = ranked_functions(self.store, self.top, self.config.variant_fitness,
                                  self.config.allow_linear)
        if not top:
            return
        table = Table(Column("rank", ">"), Column("fitness", ">"), Column("function"),
                      Column("LaTeX"))
        for i, item in enumerate(top, 1):
            act = item["activation"]
            table.add(i, number(item["fitness"]), code(act), f"$${function_latex(act)}$$")
        self.writer.add_text("top_functions", table.markdown(), generation)
        self.writer.add_figure("top_functions", shapes_figure(top), generation, close=True)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def generation_fitness(store: RunStore, generation: int) -> list:
    """The fitness of every candidate trained in ``generation`` (originals, done)."""
    return [c.fitness for c in store.candidates(generation=generation, status=Status.DONE,
                                                unique=True) if c.fitness is not None]


def shapes_figure(top: list):
    """A matplotlib figure of the ranked functions ``top`` on [-5, 5], ReLU dashed."""
    import torch
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    x = torch.linspace(-5, 5, 201)
    ax.plot(x, torch.relu(x), "--", color="0.6", label="ReLU")
    with torch.no_grad():
        for i, item in enumerate(top, 1):
            y = item["activation"](x)
            ax.plot(x, y.clamp(-10, 10),
                    label=f"#{i} {item['fitness']:.4f}: {str(item['activation'])[:40]}")
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# The monitor
# ---------------------------------------------------------------------------------------------
class Monitor:
    """Everything a running search emits besides its log and its store (see the module)."""

    def __init__(self, run_dir, store: RunStore, bar=None,
                 tensorboard: Optional[TensorBoardLog] = None,
                 total: Union[None, int, Callable[[], int]] = None):
        self.run_dir, self.store = Path(run_dir), store
        self.bar, self.tensorboard = bar, tensorboard
        self._total = total
        self.best = store.best_fitness()
        self.finished = store.count_finished()
        if self.bar is not None and self.best is not None:
            self.bar.set_postfix(best=f"{self.best:.4f}")

    def _safely(self, what: str, call) -> None:
        """TensorBoard must never stop a search: its first error is logged and turns it off."""
        if self.tensorboard is None:
            return
        try:
            call(self.tensorboard)
        except Exception as exc:  # noqa: BLE001 -- a full disk, a removed directory, ...
            log.warning("tensorboard: %s failed (%s: %s); no more TensorBoard output", what,
                        type(exc).__name__, exc)
            print(f"warning: tensorboard: {what} failed ({exc}); no more TensorBoard output",
                  file=sys.stderr)
            tb, self.tensorboard = self.tensorboard, None
            try:
                tb.close()
            except Exception:  # noqa: BLE001
                pass

    def generation_created(self, generation: int, n_new: int, n_to_train: int) -> None:
        if self.bar is not None and callable(self._total):
            self.bar.total = self._total()
            self.bar.refresh()

    def candidate_scored(self, row, score=None) -> None:
        self.finished += 1
        fitness = row.fitness if row.fitness is not None else getattr(score, "fitness", None)
        if fitness is not None and (self.best is None or fitness > self.best):
            self.best = fitness
        if self.bar is not None:
            if self.best is not None:
                self.bar.set_postfix(best=f"{self.best:.4f}", gen=row.generation, refresh=False)
            self.bar.update(1)
        self._safely("writing a result", lambda tb: tb.candidate_scored(row, self.finished))

    def generation_finished(self, generation: int, scored: dict, survivors, best) -> None:
        self._safely(f"writing generation {generation}",
                     lambda tb: tb.generation_finished(generation))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._safely("closing", lambda tb: tb.close())
        self.tensorboard = None


def make_monitor(run_dir, store: RunStore, tensorboard_dir=None, stream=sys.stderr,
                 total: Union[None, int, Callable[[], int]] = None, unit: str = "eval",
                 desc: str = "search") -> Monitor:
    """The monitor of a search in ``run_dir``: a progress bar on ``stream`` (None: no
    progress), counting ``total`` results (an int, or a function the monitor asks again after
    each generation is created), and TensorBoard event files in ``tensorboard_dir`` (None:
    none).  A ``tensorboard_dir`` that cannot be used is a one-line :class:`UserError`."""
    tb = None
    if tensorboard_dir is not None:
        check_tensorboard_dir(tensorboard_dir)
        tb = TensorBoardLog(tensorboard_dir, store)
    bar = None
    if stream is not None:
        from ..progress import progress_bar

        bar = progress_bar(total=total() if callable(total) else total,
                           initial=store.count_finished(), unit=unit, desc=desc, file=stream)
    return Monitor(run_dir, store, bar, tb, total)


# ---------------------------------------------------------------------------------------------
# gp-activations status RUN
# ---------------------------------------------------------------------------------------------
def _search_process(run_dir: Path) -> Optional[int]:
    """The pid of the search holding ``RUN/lock``, or None -- read only, the lock itself is
    not touched: Linux lists the held locks in /proc/locks (by inode); elsewhere the pid the
    search wrote into the file counts if that process is alive."""
    path = run_dir / "lock"
    try:
        pid = int(path.read_text().strip() or 0)
        inode = path.stat().st_ino
    except (OSError, ValueError):
        return None
    try:
        with open("/proc/locks") as fh:
            held = fh.read().splitlines()
    except OSError:
        held = None
    if held is not None:
        for line in held:
            fields = line.split()
            if "FLOCK" in fields and len(fields) > 5 and fields[5].rsplit(":", 1)[-1] == str(inode):
                return int(fields[4])
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid or None


def _network(cfg: SearchConfig) -> str:
    if cfg.multi_task:
        return " + ".join(t["name"] for t in cfg.task_list())
    if cfg.fitness:
        return f"the fitness function {cfg.fitness}"
    model = cfg.model
    if model is None:
        from ..data import dataset_names, get_dataset_info

        if cfg.dataset in dataset_names():
            model = get_dataset_info(cfg.dataset).default_model
    return f"{cfg.dataset} / {model or 'a custom model'}"


def status_text(run_dir, top: int = 3) -> str:
    """``gp-activations status RUN``: where a search stands, from its store (read-only)."""
    from ..progress import format_seconds

    run_dir = Path(run_dir)
    store = RunStore.open(run_dir, readonly=True)
    try:
        cfg = _config(store)
        counts = store.status_counts()
        gens = store.generation_rows()
        finished = store.count_finished()
        counted = store.count_trainings()
        pid = _search_process(run_dir)
        lines = [f"run {run_dir}: {method_text(cfg)}; on {_network(cfg)}",
                 f"search: {'running (pid %d)' % pid if pid else 'not running'}"]
        if gens:
            last = gens[-1]
            state = ("being evaluated" if last.state == "created" else "finished")
            of = f" of {cfg.generations}" if cfg.generations is not None else ""
            lines.append(f"generation: {last.generation}{of} ({state}; numbered from 0)")
        else:
            lines.append("generation: none created yet")
        running = counts["running"]
        lines.append(f"candidates: {counts['done']} done, {counts['pending'] + running} pending "
                     f"({running} running), {counts['failed']} failed, {counts['rejected']} "
                     f"rejected before training, {counts['duplicates']} duplicates")
        what = "candidates" if (cfg.fidelity == "halving" or cfg.multi_task) else "trainings"
        if cfg.budget:
            share = 100.0 * min(counted, cfg.budget) / cfg.budget
            line = (f"budget: {counted} of {cfg.budget} {what} counted ({share:.0f} %), "
                    f"{finished} finished")
        else:
            line = f"{what}: {counted} counted, {finished} finished (no budget: a generation limit)"
        if cfg.fidelity == "halving":
            line += f"; {store.training_epochs():g} epochs trained in rungs"
        lines.append(line)
        eta = _eta(store, cfg, finished, counted)
        if eta is not None and pid:
            lines.append(f"time left: about {format_seconds(eta)} at the rate so far")
        lines += ["", *_best_so_far(store, cfg, top),
                  f"  ReLU under the same budget: {number(store.relu_fitness())}", ""]
        reasons = store.failure_reasons()
        if reasons:
            lines += ["failures by reason (failed and rejected candidates):",
                      failure_lines(reasons)]
        else:
            lines.append("failures: none")
        return "\n".join(lines)
    finally:
        store.close()


def _best_so_far(store: RunStore, cfg: SearchConfig, top: int) -> list:
    """``status``'s best functions so far: rank, fitness and label, the LaTeX below."""
    from .ranking import ranked_functions

    ranked, _ = ranked_functions(store, top, cfg.variant_fitness, cfg.allow_linear)
    if not ranked:
        return ["best so far: no candidate has finished yet"]
    table = Table(Column(), Column(), Column())
    for i, item in enumerate(ranked, 1):
        table.add(i, number(item["fitness"]), item["candidate"].label,
                  below=[" " * 14 + function_latex(item["activation"])])
    return [f"best so far (top {len(ranked)}, fitness = validation accuracy):",
            table.text(header=False, indent="  ")]


def _eta(store: RunStore, cfg: SearchConfig, finished: int, counted: int) -> Optional[float]:
    """Seconds left to spend the budget, at the rate results have arrived (None: unknown)."""
    if not cfg.budget or finished < 1:
        return None
    trained = store.candidates(trained=True)
    starts = [c.started_at for c in trained if c.started_at]
    ends = [c.finished_at for c in trained if c.finished_at]
    if not starts or not ends:
        return None
    elapsed = max(ends) - min(starts)
    left = max(0, cfg.budget - finished)
    if elapsed <= 0 or not math.isfinite(elapsed):
        return None
    # the time since the last result counts as spent on the trainings in flight
    return max(0.0, elapsed / finished * left - (time.time() - max(ends)))
