"""The ``gp-activations`` command line.

Every sub-command turns bad input into one line on stderr and exit status 2 (no traceback):
library code raises :class:`~gp_activations.errors.UserError`, and argparse's own errors are
reduced to a single line as well.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from pathlib import Path

from .errors import UserError
from .tables import Column, Table

PROG = "gp-activations"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) rather than usage + error."""

    def error(self, message):
        # main() prefixes "gp-activations: error:"; a sub-command's parser names itself too
        where = "" if self.prog == PROG else f"{self.prog}: "
        raise UserError(f"{where}{message} (see {self.prog} --help)")


def _write_output(text: str, out) -> None:
    if out:
        from .errors import check_writable, os_error_message

        path = Path(out)
        with _prefixed("export"):
            check_writable(path, "file", "--out")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text if text.endswith("\n") else text + "\n")
        except OSError as exc:
            raise UserError(f"export: {os_error_message(exc, out, verb='write')}") from None
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@contextlib.contextmanager
def _prefixed(command: str):
    """A UserError raised inside names the command first: ``transfer: cannot write ...``."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{command}: {exc}") from None


def _parse_int_list(text: str, what: str) -> list[int]:
    if text is None or text.strip() == "":
        return []
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated node indices, e.g. 0,3 (got {text!r})") from None


# ---------------------------------------------------------------------------------------------
# primitives / zoo / export
# ---------------------------------------------------------------------------------------------
def cmd_primitives(args) -> int:
    from .primitive_sets import builtin_names, describe, load_primitive_set

    if not args.space:
        print("Built-in search spaces (gp-activations primitives NAME lists one):")
        spaces = Table(Column(width=14), Column(sep=" "), Column())
        for name in builtin_names():
            pset = load_primitive_set(name)
            spaces.add(name, f"{len(pset.unary):2d} unary, {len(pset.binary):2d} binary",
                       pset.description)
        print(spaces.text(header=False, indent="  "))
        return 0
    pset = load_primitive_set(args.space)
    print(f"{pset.name}: {pset.description}".rstrip(": "))
    table = Table(Column("name", width=12), Column("arity", ">", 5, sep=" "),
                  Column("LaTeX", width=40), Column("description", sep=" "))
    for row in describe(pset):
        table.add(row["name"], row["arity"], row["latex"], row["doc"])
    print(table.text())
    return 0


def cmd_zoo(args) -> int:
    from . import zoo

    table = Table(Column(width=11), Column(sep=" "))
    for name in [args.name] if args.name else zoo.names():
        act = zoo.get(name)
        table.add(name, act.latex()).add("", act)
    print(table.text(header=False))
    if args.torch or args.name:
        sample = args.name or "mish"
        print(f"\n# Standalone torch export of {sample!r} "
              f"(gp-activations export --expr '{zoo.get(sample).expression}' --format torch):\n")
        print(zoo.get(sample).torch_source(class_name=sample.title().replace("_", "")))
    return 0


def _activation_from_args(args):
    from . import zoo

    if args.expr is None:
        raise UserError("export: give --expr EXPR (an expression or zoo name) or a RUN directory")
    return zoo.resolve(args.expr, args.primitives, _parse_int_list(args.params, "--params"))


def cmd_export(args) -> int:
    if args.run and args.expr:
        raise UserError("export: give either a RUN directory or --expr, not both")
    if not args.run and (args.rank != 1 or args.with_learned_params):
        raise UserError("export: --rank and --with-learned-params need a RUN directory")
    if args.run:
        from .report import export_from_run  # a search run's winner

        text = export_from_run(args.run, rank=args.rank, fmt=args.format,
                               with_learned=args.with_learned_params)
    else:
        text = _activation_from_args(args).export(args.format)
    _write_output(text, args.out)
    return 0


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def _mean_std(values):
    from .statistics import summarize

    if not values:
        return float("nan"), float("nan")
    summary = summarize(values)
    return summary.mean, summary.std


def _train_activation(args):
    """``train``'s checks before any work, and its activation (normalised with --normalize)."""
    from . import zoo
    from .data import check_split_sizes, dataset_names, get_dataset_info

    if args.dataset not in dataset_names():
        get_dataset_info(args.dataset)  # raises the one-line error naming the known datasets
    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    try:
        check_split_sizes(args.dataset, args.val_size, args.test_size)
    except UserError as exc:
        raise UserError(str(exc).replace("val_size", "--val-size")
                        .replace("test_size", "--test-size")) from None
    act = zoo.resolve(args.act, args.primitives, _parse_int_list(args.params, "--params"))
    return act.normalized() if args.normalize else act


def cmd_train(args) -> int:
    import json

    from .data import get_dataset_info
    from .train import check_model, default_config, resolve_device, train

    act = _train_activation(args)
    device = resolve_device(args.device)
    overrides = {"epochs": args.epochs, "per_channel": args.per_channel or None,
                 "fused": args.fused, "threads": args.threads, "lr": args.lr,
                 "batch_size": args.batch_size, "time_limit": args.time_limit}
    model = args.model or get_dataset_info(args.dataset).default_model
    config = default_config(args.dataset, args.budget, model, **overrides)
    check_model(model, args.dataset, data_dir=args.data_dir, verify=not args.no_verify,
                download=args.download)
    records = []
    if not args.json:
        print(f"{act} on {args.dataset}/{model}, {config.epochs:g} epochs ({args.budget} budget), "
              f"{device}, {args.split} accuracy")
    for seed in range(args.seed, args.seed + args.seeds):
        bar = _epoch_bar(config.epochs, f"seed {seed}", disable=args.json or not sys.stderr.isatty())
        record = train(act, args.dataset, model, config, seed=seed, device=str(device),
                       split=args.split, data_dir=args.data_dir, download=args.download,
                       verify=not args.no_verify, val_size=args.val_size,
                       test_size=args.test_size,
                       progress=lambda epoch, loss, acc: bar.update(1) or bar.set_postfix(
                           loss=f"{loss:.3f}", acc=f"{acc:.4f}", refresh=False))
        bar.close()
        records.append(record)
        if not args.json:
            status = "" if record.ok else f"  [{record.status}: {record.reason}]"
            print(f"  seed {seed}: {args.split} accuracy {record.accuracy:.4f} (best "
                  f"{record.best_accuracy:.4f}), {record.wall_time:.1f} s, "
                  f"{record.samples_per_sec:.0f} samples/s{status}")
    accs = [r.accuracy for r in records if r.status in ("ok", "chance")]  # as the search counts
    times = [r.wall_time for r in records]
    mean, std = _mean_std(accs)
    if args.json:
        finite = lambda v: v if v == v else None  # noqa: E731 -- NaN is not JSON
        print(json.dumps({"activation": str(act), "dataset": args.dataset, "model": model,
                          "split": args.split, "mean_accuracy": finite(mean),
                          "std_accuracy": finite(std), "records": [r.to_dict() for r in records]},
                         indent=2))
    else:
        tmean, tstd = _mean_std(times)
        print(f"  mean {args.split} accuracy {mean:.4f} ± {std:.4f} over {len(accs)} of "
              f"{len(records)} seeds; time {tmean:.1f} ± {tstd:.1f} s per run")
    return 0


def _epoch_bar(total, desc, disable):
    from tqdm import tqdm

    return tqdm(total=int(round(total)), desc=desc, unit="epoch", leave=False, disable=disable,
                file=sys.stderr, dynamic_ncols=True)


def _add_data_args(p) -> None:
    p.add_argument("--data-dir", help="CIFAR files (default $GP_ACTIVATIONS_DATA or "
                   "~/.cache/gp-activations/data)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    p.add_argument("--no-verify", action="store_true",
                   help="accept CIFAR files whose checksums differ (subsets, re-encoded copies)")


# ---------------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------------
_SEARCH_FLAGS = ("dataset", "model", "primitives", "population", "generations", "budget",
                 "epochs", "strategy", "executor", "workers", "threads", "device", "seed",
                 "data_dir", "ray_address", "per_channel", "fused", "task_timeout", "download",
                 "param_variants", "allow_linear", "task_aggregate", "fidelity", "eta",
                 "surrogate", "lookup", "normalize", "val_size", "test_size", "race_top", "race_min_seeds", "race_max_seeds", "race_epochs",
                 "race_screen")


def cmd_search(args) -> int:
    search, out = _make_search(args)
    print(_search_banner(search, out, args.tensorboard), file=sys.stderr)
    result = search.run()
    print()
    _print_search_result(search, result, out)
    counts = result.counts
    print(f"\n{counts['done']} done, {counts['failed']} failed, {counts['rejected']} rejected "
          f"before training, {counts['duplicates'] + result.dedup_hits} duplicates not trained; "
          f"{result.wall_time:.0f} s; log: {Path(out) / 'search.log'}")
    if result.interrupted:
        print(f"\ninterrupted: finished work is saved. Resume with:\n"
              f"  gp-activations search --out {out} --resume", file=sys.stderr)
        return 130
    if result.all_failed:
        print(f"\n{PROG}: error: no candidate of {out} trained successfully; the reasons:\n"
              f"{result.failure_summary()}\n(details in {Path(out) / 'search.log'})", file=sys.stderr)
        return 1
    print(f"next: gp-activations evaluate {out}   (retrain the top functions and baselines on "
          f"the test set)")
    return 0


def _make_search(args):
    """The :class:`~gp_activations.search.driver.Search` the flags ask for (a new run, or the
    run in ``--out`` resumed) and its run directory."""
    import time as _time

    from .search import SearchConfig
    from .search.driver import Search

    flags = {k: getattr(args, k) for k in _SEARCH_FLAGS if getattr(args, k) is not None}
    if args.budget is not None:
        flags["generations"] = None  # --budget alone decides when the search stops
    if args.no_verify:
        flags["verify"] = False
    out = args.out
    extra = {}
    if args.tensorboard is not None:  # not installed, a file, read-only: one line, now
        from .search.monitor import check_tensorboard_dir

        extra["tensorboard"] = check_tensorboard_dir(args.tensorboard)
    if args.resume:
        if not out:
            raise UserError("--resume needs --out RUN (the run directory to continue)")
        _check_run_writable(out, "search --resume")
        if args.config:  # the file's changes count as the same changes given as flags
            flags = {**_config_file_changes(args.config, out, flags), **flags}
        return Search(SearchConfig(), out, resume=True, overrides=flags,
                      progress=not args.no_progress, **extra), out
    config = (SearchConfig.from_toml(args.config, flags) if args.config
              else SearchConfig.from_dict(flags, where="command line"))
    if "generations" in flags and flags["generations"] is None:
        config = config.replace(generations=None)
    out = out or f"runs/{config.dataset}-{config.strategy}-{_time.strftime('%Y%m%d-%H%M%S')}"
    return Search(config, out, progress=not args.no_progress, **extra), out


def _search_banner(search, out, tensorboard) -> str:
    """The line on stderr before a search starts: how, on what, until when, where."""
    cfg, tasks = search.config, search.plan.tasks
    stop = [f"{cfg.generations} generations"] if cfg.generations is not None else []
    if tasks:
        counted = f"budget {cfg.budget} candidates ({len(tasks)} trainings each)"
    elif search.plan.rungs:
        counted = f"budget {cfg.budget} candidates (each trains 1 to {len(search.plan.rungs)} rungs)"
    else:
        counted = f"budget {cfg.budget} trainings"
    stop += [counted] if cfg.budget else []
    where = (" + ".join(t.name for t in tasks) if tasks else cfg.dataset)
    how = cfg.strategy + (" + successive halving" if cfg.fidelity == "halving" else "") + (
        f" + {cfg.surrogate} surrogate" if cfg.surrogate else "") + (
        f" (fitness looked up in {cfg.lookup})" if cfg.lookup else "")
    return (f"search: {how} on {where} ({cfg.primitives}), population "
            f"{cfg.population}, {', '.join(stop)}"
            + f", {cfg.executor} x{cfg.workers}; run directory {out}"
            + (f"; TensorBoard: tensorboard --logdir {tensorboard}" if tensorboard else ""))


def _print_search_result(search, result, out) -> None:
    """The top functions (per task, for a multi-task search), the final race, and what they
    were selected for."""
    cfg, tasks = search.config, search.plan.tasks
    network = _network_label(cfg, search.plan.base_job.model)
    if tasks:
        how = ("weighted mean" if len({t.weight for t in tasks}) > 1 else "mean") \
            if cfg.task_aggregate == "mean" else "minimum"
        print(f"Top functions of {out} for {len(tasks)} tasks (fitness = the {how} over "
              f"tasks of validation accuracy / ReLU's, each task's fitness budget):")
        print(result.table())
        print(result.task_table())
        print(f"(selected to do well on every one of these tasks -- gp-activations evaluate "
              f"{out} retrains them on each task's test set)")
    else:
        print(f"Top functions of {out} for {network} (fitness = validation accuracy after "
              f"{search.plan.base_job.train['epochs']:g} epochs):")
        print(result.table())
    if result.race:
        print(result.race_table())
    if not cfg.fitness and not tasks:
        print(f"(selected for {network}: specialised to that network and task until evaluated "
              f"elsewhere -- gp-activations evaluate {out} --model NAME tests a transfer)")
        if network == "mnist1d / cnn1d":
            print("(cnn1d is small and unnormalised: for a BatchNorm ResNet run gp-activations "
                  "search --config experiments/mnist1d_resnet1d.toml, for functions general "
                  "across networks experiments/mnist1d_general.toml)")


def _check_run_writable(run, command: str) -> None:
    """A command that writes into an existing run (resume, evaluate): one line now if the run
    directory is read-only, rather than a failure half-way (a missing run is left to the
    command's own message)."""
    from .errors import check_writable

    if Path(run).is_dir():
        with _prefixed(command):
            check_writable(run, "dir", "the run directory",
                           fix=f"{command.split()[0]} writes into the run: copy it to writable "
                               f"storage (cp -r {run} /tmp/) and run the command on the copy")
        db = Path(run) / "run.sqlite"
        if db.is_file() and not os.access(db, os.W_OK):
            raise UserError(f"{command}: cannot write {db}: it is read-only (make it writable, "
                            f"e.g. chmod u+w {db}, or copy the run)")


def _config_file_changes(config_path, out, flags: dict) -> dict:
    """``search --config FILE --resume``: the values of FILE that differ from the run's stored
    config, to be applied as flags would be.  Keys that define the run (everything but
    driver.RESUME_OVERRIDABLE) may not change: one line naming the file, the key and both
    values.  Keys also given as flags are the flags' (they override the file)."""
    import dataclasses
    import typing

    from .search.config import SearchConfig, coerce, load_toml
    from .search.plan import RESUME_OVERRIDABLE
    from .search.store import RunStore, is_run_dir

    values = load_toml(config_path)  # a broken file is an error even on resume
    if not is_run_dir(out):
        return {}  # Search says that this is not a run
    store = RunStore.open(out, readonly=True)
    try:
        stored = store.config()
    finally:
        store.close()
    hints = typing.get_type_hints(SearchConfig)
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    changes = {}
    for key, value in values.items():
        if key in flags or key not in known:
            continue
        value = coerce(key, value, hints[key], str(config_path))
        if stored.get(key) == value:
            continue
        if key not in RESUME_OVERRIDABLE:
            raise UserError(f"--resume: {config_path} sets {key} = {value!r} but {out} was "
                            f"started with {stored.get(key)!r}; {key!r} defines the run and "
                            f"cannot change (only {', '.join(sorted(RESUME_OVERRIDABLE))} can): "
                            f"restore it in the file, or start a new run with another --out")
        changes[key] = value
    for key, value in changes.items():
        print(f"note: {config_path} changes {key} from {stored.get(key)!r} to {value!r}",
              file=sys.stderr)
    return changes


def _network_label(cfg, model) -> str:
    from .data import dataset_names, get_dataset_info
    from .search.config import is_object_label

    if cfg.fitness:
        return f"the fitness function {cfg.fitness}"
    if model is None and cfg.dataset in dataset_names():
        model = get_dataset_info(cfg.dataset).default_model
    if model is not None and not isinstance(model, str):
        model = getattr(model, "__name__", "a custom model")
    elif is_object_label(model) or (isinstance(model, str) and ":" in model):
        model = model.rpartition(":")[2].strip("<>")
    return f"{cfg.dataset} / {model or 'a custom model'}"


# ---------------------------------------------------------------------------------------------
# evaluate / report
# ---------------------------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_run, evaluate_tasks, format_table

    _check_run_writable(args.run, "evaluate")
    common = dict(top=args.top, seeds=args.seeds, epochs=args.epochs, baselines=args.baselines,
                  executor=args.executor, workers=args.workers, device=args.device,
                  data_dir=args.data_dir, task_timeout=args.task_timeout,
                  progress=not args.no_progress, max_seeds=args.max_seeds, alpha=args.alpha,
                  reference=args.reference)
    if args.model or args.dataset:
        results = [(None, evaluate_run(args.run, model=args.model, dataset=args.dataset,
                                       **common))]
    else:
        results = evaluate_tasks(args.run, **common)
    for name, rows in results:
        if len(results) > 1:
            print(f"\n{name} (test accuracy):")
        print(format_table(rows))
    written = sorted(Path(args.run).glob("results*.csv"), key=lambda p: -p.stat().st_mtime)
    written = written[:len(results)]
    print(f"\nwrote {', '.join(str(p) for p in written)} (and .tex); "
          f"next: gp-activations report {args.run}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.run, k=args.top, compare=args.compare or ())
    print(f"wrote {path} and its plots")
    return 0


def cmd_status(args) -> int:
    from .search.monitor import status_text

    if args.top < 1:
        raise UserError(f"status: --top must be >= 1, got {args.top}")
    with _prefixed("status"):
        print(status_text(args.run, top=args.top))
    return 0


def cmd_transfer(args) -> int:
    from .errors import check_writable
    from .transfer import run_transfer

    # transfer.md, transfer.csv and transfer.sqlite go there: a file in the way or read-only
    # media is one line now, not after the trainings
    with _prefixed("transfer"):
        check_writable(args.out, "dir", "--out", fix="choose an --out directory on writable "
                       "storage")
    table = run_transfer(args.runs, args.tasks, args.out, top=args.top, seeds=args.seeds,
                         baselines=args.baselines, epochs=args.epochs, executor=args.executor,
                         workers=args.workers, device=args.device, task_timeout=args.task_timeout,
                         data_dir=args.data_dir, progress=not args.no_progress,
                         into_runs=args.into_runs)
    print(table.text())
    out = Path(args.out)
    print(f"\nwrote {out / 'transfer.md'} and {out / 'transfer.csv'} (trainings in "
          f"{out / 'transfer.sqlite'}: a rerun resumes)"
          + (f"; transfer.md also into {', '.join(str(r) for r in args.runs)}"
             if args.into_runs else ""))
    return 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``gp-activations`` parser: one sub-parser per command (``_*_parser`` below)."""
    parser = _Parser(prog=PROG, description="Discover activation functions with evolution "
                     "(DEAP) and gradient descent (PyTorch), after PANGAEA.")
    from . import __version__
    from .data import dataset_names

    datasets = ", ".join(dataset_names())  # every one, so --help never falls behind data.py

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    for add in (_primitives_parser, _zoo_parser, _export_parser, _train_parser, _search_parser,
                _evaluate_parser, _status_parser, _report_parser, _transfer_parser):
        add(sub, datasets)
    return parser


def _primitives_parser(sub, datasets: str) -> None:
    p = sub.add_parser("primitives", help="list the built-in search spaces or one set's operators")
    p.add_argument("space", nargs="?", help="built-in name, path to a .py file, or module:attr")
    p.set_defaults(func=cmd_primitives)


def _zoo_parser(sub, datasets: str) -> None:
    p = sub.add_parser("zoo", help="show the known activation functions as trees, LaTeX and torch code")
    p.add_argument("name", nargs="?", help="one zoo entry (default: all)")
    p.add_argument("--torch", action="store_true", help="also print a sample torch export")
    p.set_defaults(func=cmd_zoo)


def _export_parser(sub, datasets: str) -> None:
    p = sub.add_parser("export", help="export an activation as LaTeX, sympy, torch code or JSON")
    p.add_argument("run", nargs="?", help="a search run directory (exports its winner)")
    p.add_argument("--expr", help="an expression in prefix notation, e.g. 'mul(x, sigmoid(x))', "
                   "or a zoo name")
    p.add_argument("--primitives", default="pangaea", help="search space of --expr (default pangaea)")
    p.add_argument("--params", default="", help="nodes carrying learnable scalars, e.g. 0,3")
    p.add_argument("--format", default="latex", choices=["latex", "sympy", "torch", "json"])
    p.add_argument("--rank", type=int, default=1, help="with RUN: which function (1 = best)")
    p.add_argument("--with-learned-params", action="store_true",
                   help="with RUN: the scalars learned in training. torch: one set per "
                   "activation site of the trained network, named by module (SITES, LEARNED); "
                   "EvolvedActivation(site=INDEX or NAME) picks one, site=None their mean, "
                   "EvolvedActivation.apply_to(model, by='name'|'order'|'mean') maps them onto "
                   "a network. latex, sympy, json: the mean over sites")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_export)


def _train_parser(sub, datasets: str) -> None:
    p = sub.add_parser("train", help="train a network with one activation (several seeds)")
    p.add_argument("--act", required=True, help="an expression or a zoo name (e.g. relu)")
    p.add_argument("--dataset", default="mnist1d", help=f"{datasets} (default mnist1d)")
    p.add_argument("--model", help="network (default: the dataset's; e.g. cnn1d, resnet20)")
    p.add_argument("--epochs", type=float, help="epochs (default: the dataset's budget)")
    p.add_argument("--budget", default="train", choices=["train", "fitness"],
                   help="which preset schedule to start from (default train)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="where accuracy is measured (default test)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--primitives", default="pangaea", help="search space of --act")
    p.add_argument("--params", default="", help="nodes carrying learnable scalars, e.g. 0,3")
    p.add_argument("--per-channel", action="store_true", help="learnable scalars per channel")
    p.add_argument("--normalize", action="store_true",
                   help="normalise the output: zero mean, unit variance under N(0, 1) inputs")
    _split_size_flags(p)
    _fused_flags(p, "torch.compile the activation")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the preset's)")
    p.add_argument("--time-limit", type=float, help="seconds per run before it stops as timeout")
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with every record")
    p.set_defaults(func=cmd_train)


def _split_size_flags(p) -> None:
    p.add_argument("--val-size", type=int, help="mnist1d_hard: validation samples (default "
                   "1000; more are generated once and cached, up to 200000)")
    p.add_argument("--test-size", type=int, help="mnist1d_hard: test samples (default 4000; "
                   "up to 200000)")


def _search_parser(sub, datasets: str) -> None:
    p = sub.add_parser("search", help="evolve activation functions (PANGAEA-style)")
    p.add_argument("--config", help="TOML file (e.g. experiments/mnist1d.toml); flags override "
                   "it, and paths in it are relative to it. With --resume its changes to the "
                   "stored config count as the same flags would")
    p.add_argument("--out", help="run directory (default runs/DATASET-STRATEGY-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--dataset", help=f"{datasets} (default mnist1d)")
    p.add_argument("--model", help="network (default: the dataset's), or file.py:function")
    p.add_argument("--primitives", help="built-in search space (default pangaea), .py file or "
                   "module:attr")
    p.add_argument("--population", type=int, help="functions kept per generation, and new "
                   "functions per generation (default 16); each new function costs 1 + "
                   "--param-variants trainings (the plain function and its placements of "
                   "learnable scalars)")
    p.add_argument("--param-variants", type=int, help="placements of learnable scalars trained "
                   "per new function besides the plain one (default 3; 0: plain functions only)")
    p.add_argument("--allow-linear", action=argparse.BooleanOptionalAction, default=None,
                   help="rank affine functions (x, 2x + 1: the network becomes linear) as "
                   "discoveries, flagged (default: no)")
    p.add_argument("--task-aggregate", choices=["mean", "min"], help="a multi-task search's "
                   "fitness: the (weighted) mean or the minimum over tasks of accuracy / ReLU's")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--generations", type=int, help="generations (default 8)")
    g.add_argument("--budget", type=int, help="stop after this many trainings (instead of a "
                   "number of generations)")
    p.add_argument("--epochs", type=float, help="fitness epochs per candidate")
    _search_method_args(p)
    _search_run_args(p)
    p.set_defaults(func=cmd_search)


def _search_method_args(p) -> None:
    """search: the strategy, the fidelity, the surrogate, the lookup table, the final race."""
    p.add_argument("--strategy", help="evolution (default), random (the same space, no "
                   "selection) or module:Class (your Strategy subclass)")
    p.add_argument("--fidelity", choices=["full", "halving"], help="full (default): every "
                   "candidate trains the fitness budget; halving: successive halving in rungs")
    p.add_argument("--eta", type=float, help="halving: the best 1/eta of a rung are promoted "
                   "(default 3)")
    p.add_argument("--surrogate", help="pre-screen proposals with a fitted surrogate: forest "
                   "or ridge (default: none)")
    p.add_argument("--lookup", help="a tabular benchmark CSV: fitness read from it instead of "
                   "trained (benchmarks/tabular/mnist1d_cnn1d.csv)")
    p.add_argument("--race", dest="race_top", type=int, metavar="K", help="after the last "
                   "generation, race the top K functions and SiLU, GELU, ReLU on the full "
                   "schedule (validation split), adding seeds until a paired test separates "
                   "them; the race's winner is the search's (default 0: no race)")
    p.add_argument("--race-min-seeds", type=int, help="race: seeds before the first look "
                   "(default 3)")
    p.add_argument("--race-max-seeds", type=int, help="race: the most seeds per function "
                   "(default 10)")
    p.add_argument("--race-epochs", type=float, help="race: epochs per training (default: the "
                   "dataset's full schedule)")
    p.add_argument("--race-screen", type=int, metavar="N", help="race: first train the top N "
                   "functions one seed of the race's schedule, and race the best K of them by "
                   "that (default 0: race the top K by fitness)")


def _search_run_args(p) -> None:
    """search: where and how its trainings run, and what it shows."""
    p.add_argument("--executor", choices=["serial", "process", "ray"],
                   help="where evaluations run (default serial)")
    p.add_argument("--workers", type=int, help="parallel evaluations (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads per evaluation (default 1)")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--seed", type=int, help="evolution seed (default 0)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="learnable scalars per channel instead of per layer")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="train every candidate output-normalised: (f(x) - shift) / scale, zero "
                        "mean and unit variance under N(0, 1) inputs (AQuaSurF)")
    _split_size_flags(p)
    _fused_flags(p, "torch.compile every candidate's activation")
    p.add_argument("--task-timeout", type=float, help="seconds before a hung worker is killed "
                   "(default: 24 h, or twice the training time limit)")
    p.add_argument("--ray-address", help="join an existing Ray cluster")
    p.add_argument("--data-dir", help="CIFAR files (default $GP_ACTIVATIONS_DATA)")
    p.add_argument("--download", action="store_true", default=None, help="let torchvision download CIFAR")
    p.add_argument("--no-verify", action="store_true", help="accept CIFAR files whose checksums differ")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files "
                   "into DIR: best and median fitness per generation, counts and failures by "
                   "reason, the top functions' shapes (needs pip install tensorboard; view with "
                   "tensorboard --logdir DIR)")


def _evaluate_parser(sub, datasets: str) -> None:
    p = sub.add_parser("evaluate", help="retrain a run's top functions and baselines on the test set")
    p.add_argument("run", help="a search run directory")
    p.add_argument("--top", type=int, help="how many found functions (default: the run's "
                   "[evaluate] top, else 3)")
    p.add_argument("--seeds", type=int, help="seeds per activation (default: [evaluate] seeds, else 5); "
                   "with --max-seeds the minimum")
    p.add_argument("--max-seeds", type=int, metavar="N", help="evaluations that decide: add seeds "
                   "to each comparison with the reference (--reference, default relu) until a "
                   "sequential t-test (alpha spending) finds it different or it has N seeds "
                   "(default: [evaluate] max_seeds, else a fixed number of seeds; 0: a fixed "
                   "number of seeds)")
    p.add_argument("--reference", metavar="NAME", help="the baseline every p-value and "
                   "--max-seeds comparison is against (default: [evaluate] reference, else relu; "
                   "e.g. silu: does a found function beat SiLU?)")
    p.add_argument("--alpha", type=float, help="false-positive rate of each --max-seeds "
                   "comparison over all its looks (default: [evaluate] alpha, else 0.05)")
    p.add_argument("--epochs", type=float, help="epochs (default: [evaluate] epochs, else the "
                   "dataset's full schedule)")
    p.add_argument("--baselines", help="comma-separated zoo names (default: [evaluate] baselines, "
                   "else relu,silu,gelu,elu,selu,softplus,mish,tanh)")
    p.add_argument("--model", help="evaluate on another model (transfer), e.g. wrn10_4; uses "
                   "that model's preset schedule")
    p.add_argument("--dataset", help=f"evaluate on another dataset (transfer): {datasets}")
    p.add_argument("--executor", choices=["serial", "process", "ray"],
                   help="default: the run's executor")
    p.add_argument("--workers", type=int, help="default: the run's workers")
    p.add_argument("--device", help="auto, cpu or cuda (default: the run's)")
    p.add_argument("--data-dir", help="CIFAR files (default: the run's --data-dir)")
    p.add_argument("--task-timeout", type=float, help="seconds before a hung worker is killed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def _status_parser(sub, datasets: str) -> None:
    p = sub.add_parser("status", help="where a search stands: generation, candidates, budget, "
                       "best so far, failures (read-only: safe while it runs)")
    p.add_argument("run", help="a search run directory")
    p.add_argument("--top", type=int, default=3, help="best functions to show (default 3)")
    p.set_defaults(func=cmd_status)


def _report_parser(sub, datasets: str) -> None:
    p = sub.add_parser("report", help="plots and report.md of a run")
    p.add_argument("run", help="a search run directory")
    p.add_argument("--top", type=int, default=4, help="functions to plot (default 4)")
    p.add_argument("--compare", action="append", metavar="RUN",
                   help="another run to compare with (e.g. random search); repeatable")
    p.set_defaults(func=cmd_report)


def _transfer_parser(sub, datasets: str) -> None:
    p = sub.add_parser("transfer", help="train the top functions of several runs on every task, "
                       "against the baselines (specialised vs general)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="search run directories")
    p.add_argument("--tasks", required=True, help="comma-separated DATASET/MODEL pairs, e.g. "
                   "mnist1d/cnn1d,mnist1d/mlp,mnist1d_hard/resnet1d")
    p.add_argument("--out", required=True, help="directory of the transfer's results (resumable)")
    p.add_argument("--top", type=int, default=1, help="functions per run (default 1)")
    p.add_argument("--seeds", type=int, default=10, help="seeds per function and task (default 10)")
    p.add_argument("--epochs", type=float, help="epochs (default: each task's full schedule)")
    p.add_argument("--baselines", help="comma-separated zoo names (default: relu,silu,gelu,elu,"
                   "selu,softplus,mish,tanh)")
    p.add_argument("--executor", choices=["serial", "process", "ray"], default="serial")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-dir", help="CIFAR files (default: $GP_ACTIVATIONS_DATA)")
    p.add_argument("--task-timeout", type=float, help="seconds before a hung worker is killed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--into-runs", action="store_true", help="also write transfer.md into each "
                   "RUN (its report then includes the table); by default only --out is written")
    p.set_defaults(func=cmd_transfer)


def _fused_value(text: str):
    value = {"true": True, "false": False, "auto": "auto"}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true, false or auto, got {text!r}")
    return value


def _fused_flags(p, what: str) -> None:
    p.add_argument("--fused", nargs="?", const=True, default=None, type=_fused_value,
                   metavar="auto", help=f"{what}; --fused auto: where the cost model says it "
                   "pays back its compile time (the default)")
    p.add_argument("--no-fused", dest="fused", action="store_const", const=False,
                   help="never torch.compile the activation")


def main(argv=None) -> int:
    parser = build_parser()
    args = None
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # name the sub-command whose help lists the valid flags
            prog = f"{PROG} {args.command}" if getattr(args, "command", None) else PROG
            where = f"{prog}: " if prog != PROG else ""
            raise UserError(f"{where}unrecognized arguments: {' '.join(extras)} "
                            f"(see {prog} --help)")
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except UserError as exc:
        return _error(exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gp-activations zoo | head`
        return 0
    except (OSError, UnicodeDecodeError, sqlite3.Error) as exc:
        # The environment's fault, not a bug: read-only media, a file where a directory
        # belongs, a full disk, a file that is not UTF-8, a run database that cannot be
        # written.  Anything else keeps its traceback.
        message = _environment_error(exc, args)
        if message is None:
            raise
        return _error(UserError(message))


def _error(exc: UserError) -> int:
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return exc.exit_code


def _context_path(args):
    """The path a command writes to (or reads): where an error without a file name happened."""
    if args is None:
        return None
    for key in ("out", "run"):
        value = getattr(args, key, None)
        if value:
            return value
    runs = getattr(args, "runs", None)
    return runs[0] if runs else None


_SQLITE_ENVIRONMENT = {
    "readonly database": "the run directory or its run.sqlite is read-only; copy the run to "
                         "writable storage (or chmod u+w it) and run the command there",
    "unable to open database file": "the run directory is read-only, missing or not a "
                                    "directory; copy the run to writable storage and run the "
                                    "command there",
    "disk is full": "the disk is full; free some space and run the command again (finished "
                    "work is kept)",
    "disk i/o error": "the disk failed or is read-only; check it, then run the command again",
    "database is locked": "another process holds the database; wait for it to finish",
    "malformed": "the database is corrupt; restore it from a copy",
    "not a database": "the file is not a run database; check the path",
}


def _environment_error(exc, args):
    """One line for an error of the environment (see main), or None for a bug."""
    from .errors import is_path_error, os_error_message, unicode_error_message

    where = _context_path(args)
    if isinstance(exc, UnicodeDecodeError):
        return unicode_error_message(exc, f"a file read for {where}" if where else None)
    if isinstance(exc, sqlite3.Error):
        text = str(exc)
        hint = next((h for k, h in _SQLITE_ENVIRONMENT.items() if k in text.lower()), None)
        if hint is None:
            return None
        return f"cannot write the database of {where or 'the run'}: {text} ({hint})"
    if is_path_error(exc):
        return os_error_message(exc, where)
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
