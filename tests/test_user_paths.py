"""The paths a new user takes (issue "every user path works as documented").

Bring-your-own-task with every factory signature the docs allow, searches started from Python
objects evaluated from Python, honest test splits and presets for a user's data, flagged
results (linear functions, functions equal to a baseline), bad budgets, failed searches,
friction (did-you-mean, non-TTY progress, scipy warnings) and the import structure.
"""

from __future__ import annotations

import ast
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from gp_activations.search.store import RunStore
from gp_activations import Activation, zoo
from gp_activations.cli import main
from gp_activations.data import as_dataset
from gp_activations.errors import UserError
from gp_activations.evaluate import evaluate_run, format_table, welch_p
from gp_activations.report import write_report
from gp_activations.search import SearchConfig, run_search
from gp_activations.search.screening import equal_baseline, is_affine
from gp_activations.train import check_model, default_config, train
from search_helpers import CHEAP, HELPERS, rows

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _spirals(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * math.pi + 0.5
    label = torch.randint(0, 2, (n,), generator=g)
    sign = 1 - 2 * label.float()
    x = torch.stack([sign * t * torch.cos(t), sign * t * torch.sin(t)], dim=1) / 5
    return x + 0.2 * torch.randn(n, 2, generator=g), label


def spirals_train_only():
    return _spirals()


def mlp_keyword(act, num_classes=2):
    return nn.Sequential(nn.Linear(2, 16), act(num_channels=16), nn.Linear(16, num_classes))


def mlp_positional(act, num_classes=2):
    return nn.Sequential(nn.Linear(2, 16), act(16), nn.Linear(16, num_classes))


def mlp_bare(act, num_classes=2):
    return nn.Sequential(nn.Linear(2, 16), act(), nn.Linear(16, num_classes))


TINY = dict(population=2, generations=1, param_variants=1, init_zoo=False, threads=1,
            init_expressions=["mul(x, sigmoid(x))"], dataset="spirals",
            train={"epochs": 2, "batch_size": 64, "lr": 1e-2})


# ---------------------------------------------------------------------------------------------
# 1. every factory signature, every code path
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [mlp_keyword, mlp_positional, mlp_bare])
def test_every_factory_signature_works_in_check_train_search_evaluate(model, tmp_path):
    data = spirals_train_only()
    check_model(model, data)  # the start-up check (built with plain ReLU)
    for act in (zoo.get("silu"), "relu", nn.GELU):
        rec = train(act, as_dataset(data, name="spirals"), model, epochs=1, batch_size=64)
        assert rec.status == "ok", rec.reason
    result = run_search(SearchConfig(**TINY), out=tmp_path / "run", model=model, data=data,
                        progress=False)
    assert result.counts["done"] >= 2 and result.counts["failed"] == 0
    table = evaluate_run(tmp_path / "run", top=1, seeds=1, epochs=1, baselines=["relu"],
                         model=model, data=data, progress=False)
    assert [r.label for r in table] == ["found #1", "relu"]
    assert all(0.0 <= r.mean <= 1.0 for r in table)
    assert (tmp_path / "run" / "report").exists() or write_report(tmp_path / "run").is_file()


def test_per_channel_scalars_reach_a_users_model(tmp_path):
    act = Activation.from_string("mul(x, sigmoid(x))", params=[3])
    rec = train(act, as_dataset(spirals_train_only(), name="spirals"), mlp_keyword, epochs=1,
                batch_size=64, per_channel=True)
    assert rec.status == "ok"
    (site,) = rec.param_trajectory[-1].values()
    assert len(site["p0"]) == 16  # one scalar per channel of act(num_channels=16)


# ---------------------------------------------------------------------------------------------
# 2. a search started from Python objects is evaluated with the same objects
# ---------------------------------------------------------------------------------------------
def test_python_object_run_needs_and_accepts_the_objects(tmp_path):
    data = spirals_train_only()
    run_search(SearchConfig(**TINY), out=tmp_path / "run", model=mlp_keyword, data=data,
               progress=False)
    with pytest.raises(UserError, match=r"pass the same objects: evaluate_run\("):
        evaluate_run(tmp_path / "run", top=1, seeds=1, epochs=1, progress=False)
    assert main(["evaluate", str(tmp_path / "run"), "--seeds", "1"]) == 2
    table = evaluate_run(tmp_path / "run", top=1, seeds=2, epochs=1, baselines=["relu"],
                         model=mlp_keyword, data=data, progress=False)
    assert [r.n for r in table] == [2, 2]
    report = write_report(tmp_path / "run").read_text()
    assert "## Final evaluation (test set)" in report and "carved: 90 samples (15%)" in report


# ---------------------------------------------------------------------------------------------
# 3. the test split is never the selection split; a user's dataset gets its own preset
# ---------------------------------------------------------------------------------------------
def _rows_of(x):
    return {tuple(v) for v in x.tolist()}


def test_train_only_data_gets_a_separate_fixed_test_split():
    x, y = _spirals(1000)
    a, b = as_dataset((x, y), seed=0), as_dataset((x, y), seed=1)
    assert len(a.y_test) == 150 and len(a.y_val) == 85 and len(a.y_train) == 765
    for ds in (a, b):
        train_, val, test = _rows_of(ds.x_train), _rows_of(ds.x_val), _rows_of(ds.x_test)
        assert not (test & val) and not (test & train_) and not (train_ & val)
        assert len(train_ | val | test) == 1000
    assert torch.equal(a.x_test, b.x_test)  # the run's seed moves validation, never test
    assert not torch.equal(a.x_val, b.x_val)
    assert a.test_source.startswith("carved: 150 samples (15%) of the given training data")


def test_train_and_val_given_test_carved_from_train_and_val_untouched():
    x, y = _spirals(1000)
    ds = as_dataset((x[:800], y[:800], x[800:], y[800:]))
    assert torch.equal(ds.x_val, x[800:]) and len(ds.y_test) == 120 and len(ds.y_train) == 680
    assert not (_rows_of(ds.x_test) & _rows_of(ds.x_val))
    full = as_dataset((x[:700], y[:700], x[700:850], y[700:850], x[850:], y[850:]))
    assert full.test_source == "given" and torch.equal(full.x_test, x[850:])
    with pytest.raises(UserError, match="too few to carve a test split"):
        as_dataset((x[:2], y[:2]))


def test_unknown_dataset_gets_the_documented_custom_preset_not_mnist1ds():
    custom, mnist = default_config("spirals", "train"), default_config("mnist1d", "train")
    assert custom.preset == "custom/train" and mnist.preset == "mnist1d/train"
    assert (custom.lr, custom.epochs, custom.batch_size) == (3e-3, 20, 128)
    assert (custom.lr, custom.epochs) != (mnist.lr, mnist.epochs)
    assert default_config("cifar-10", "fitness").preset == "cifar/fitness"
    cfg = SearchConfig(**TINY)
    assert cfg.train_config().preset == "custom/fitness"  # recorded in every training record


# ---------------------------------------------------------------------------------------------
# 5. no silent nonsense
# ---------------------------------------------------------------------------------------------
def linear_favouring_fitness(act, seed):
    """The identity scores best (as a linear network once did on digits)."""
    return {"x": 0.99, "mul(sigmoid(x), x)": 0.9}.get(act.expression, 0.5)


def test_affine_and_baseline_equal_functions_are_recognised():
    for text in ("x", "mul(2.0, x)", "sub(x, one)", "add(x, tanh(zero))", "neg(x)"):
        assert is_affine(Activation.from_string(text)), text
    for text in ("relu(x)", "mul(x, x)", "abs(x)", "add(x, mul(0.01, sin(x)))"):
        assert not is_affine(Activation.from_string(text)), text
    assert is_affine(Activation.from_string("mul(x, one)", params=[0, 2]))  # p0·(x·p1) is affine
    assert equal_baseline(Activation.from_string("mul(sigmoid(x), x)")) == "silu"
    assert equal_baseline(Activation.from_string("mul(x, sigmoid(x))", params=[3])) == "swish_beta"
    assert equal_baseline(Activation.from_string("max(x, zero)")) == "relu"
    assert equal_baseline(Activation.from_string("mul(x, tanh(x))")) is None


def test_linear_winner_is_flagged_not_ranked_unless_allowed(tmp_path, capsys):
    cfg = dict(CHEAP, generations=1, population=2, param_variants=0,
               init_expressions=["x", "mul(sigmoid(x), x)"])
    result = run_search(SearchConfig(**cfg), out=tmp_path / "a", progress=False,
                        fitness=linear_favouring_fitness)
    assert result.top[0]["expression"] == "mul(sigmoid(x), x)"
    assert "x" not in [t["expression"] for t in result.top]
    table = result.table()
    assert "1 affine function(s) not ranked (best: x, fitness 0.9900)" in table
    assert "(= silu)" in table  # the winner is SiLU, written the other way round
    assert "not ranked" in (tmp_path / "a" / "search.log").read_text()
    allowed = run_search(SearchConfig(**cfg, allow_linear=True), out=tmp_path / "b",
                         progress=False, fitness=linear_favouring_fitness)
    assert allowed.top[0]["expression"] == "x" and allowed.top[0]["linear"]
    assert "linear: the network becomes affine" in allowed.table()


def test_found_function_equal_to_a_baseline_is_trained_once(tmp_path):
    cfg = dict(CHEAP, generations=1, population=2, param_variants=0,
               init_expressions=["mul(sigmoid(x), x)", "mul(x, tanh(x))"])
    run = tmp_path / "run"
    run_search(SearchConfig(**cfg), out=run, progress=False, fitness=f"{HELPERS}:score_fitness")
    table = evaluate_run(run, top=2, seeds=1, epochs=0.2, baselines=["relu", "silu"],
                         dataset="digits", model="cnn_digits", progress=False)
    by_label = {r.label: r for r in table}
    assert by_label["found #1"].equals == "silu"
    assert by_label["found #1"].expression == "mul(sigmoid(x), x)"
    assert by_label["found #1"].accuracies == by_label["silu"].accuracies
    assert "found #1 = silu" in format_table(table)
    store = RunStore.open(run, readonly=True)
    labels = [r.label for r in store.final_trainings()]
    store.close()
    assert "found #1" not in labels and labels.count("silu") == 1  # trained once, as silu
    report = write_report(run).read_text()
    assert "| found #1 = silu |" in report


@pytest.mark.parametrize("argv", [
    ["train", "--act", "relu", "--epochs", "inf"],
    ["train", "--act", "relu", "--epochs", "nan"],
    ["search", "--epochs", "inf", "--out", "RUN"],
    ["search", "--epochs", "-1", "--out", "RUN"],
])
def test_budgets_that_cannot_run_are_rejected_up_front(argv, tmp_path, capsys):
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epochs" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "run").exists()  # nothing was created


def test_evaluate_rejects_infinite_epochs_before_any_training(tmp_path, capsys):
    run_search(SearchConfig(**dict(CHEAP, generations=1, population=1)), out=tmp_path / "run",
               progress=False, fitness=f"{HELPERS}:score_fitness")
    assert main(["evaluate", str(tmp_path / "run"), "--epochs", "inf", "--dataset", "digits",
                 "--model", "cnn_digits"]) == 2
    assert "finite" in capsys.readouterr().err
    assert rows(tmp_path / "run")  # the run itself is untouched


def always_fails(act, seed):
    raise RuntimeError("the lab's cluster is down")


def test_a_search_in_which_everything_failed_exits_non_zero_with_reasons(tmp_path, capsys):
    me = Path(__file__).resolve()
    toml = tmp_path / "fail.toml"
    toml.write_text(f'fitness = "{me}:always_fails"\npopulation = 2\ngenerations = 1\n'
                    f'init_zoo = false\nparam_variants = 0\nthreads = 1\n')
    code = main(["search", "--config", str(toml), "--out", str(tmp_path / "run"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "no candidate of" in captured.err and "trained successfully" in captured.err
    assert "RuntimeError: the lab's cluster is down" in captured.err
    assert "next: gp-activations evaluate" not in captured.out


# ---------------------------------------------------------------------------------------------
# 7. friction
# ---------------------------------------------------------------------------------------------
def test_config_typos_get_a_did_you_mean(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'populaton'; did you mean 'population'\?"):
        SearchConfig.from_dict({"populaton": 3})
    with pytest.raises(UserError, match=r"in \[train\]; did you mean 'epochs'\?"):
        SearchConfig.from_dict({"train": {"epoch": 3}}).train_config()
    with pytest.raises(UserError, match=r"did you mean 'evolution'\?"):
        SearchConfig(strategy="evolutoin")
    toml = tmp_path / "t.toml"
    toml.write_text("generatoins = 2\n")
    with pytest.raises(UserError, match="did you mean 'generations'"):
        SearchConfig.from_toml(toml)


def test_param_variants_flag_and_population_help(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "each new function costs 1 + --param-variants trainings" in help_text
    code = main(["search", "--dataset", "digits", "--population", "1", "--generations", "1",
                 "--param-variants", "0", "--epochs", "0.05", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 0
    stored = json.loads(rows(tmp_path / "run")[0]["params"])
    assert stored == [] and all(json.loads(r["params"]) == [] for r in rows(tmp_path / "run"))


def test_progress_without_a_terminal_is_lines_not_a_bar(tmp_path, capsys):
    from gp_activations.progress import LineProgress

    run_search(SearchConfig(**dict(CHEAP, generations=1, population=2)), out=tmp_path / "run",
               progress=True, fitness=f"{HELPERS}:score_fitness")
    err = capsys.readouterr().err
    assert "\r" not in err and "search: " in err and " evals" in err
    bar = LineProgress(total=4, desc="demo", interval=0.0)
    bar.update(2)
    bar.set_postfix(best="0.9")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("demo: 2/4 its (50 %)") and "best=0.9" in lines[-1]


def test_nearly_identical_groups_give_a_p_value_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert welch_p([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == 1.0
        assert welch_p([0.5, 0.5, 0.5], [0.6, 0.6, 0.6]) == 0.0
        p = welch_p([0.9, 0.9, 0.9 + 1e-12], [0.9, 0.9 + 1e-12, 0.9])
        assert 0.0 <= p <= 1.0


# ---------------------------------------------------------------------------------------------
# 8. the import structure: dependencies point one way
# ---------------------------------------------------------------------------------------------
def _import_graph() -> dict:
    pkg = ROOT / "gp_activations"
    graph = {}
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            continue
        package = name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" for a in node.names]
                deps.update(n for n in names if (ROOT / Path(*n.split("."))).with_suffix(".py").exists())
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gp_activations"):
                deps.add(node.module)
        graph[name] = {d for d in deps if d != name}
    return graph


def test_no_import_cycles_and_the_named_untanglings():
    graph = _import_graph()
    assert "gp_activations.cli" not in graph["gp_activations.report"]
    assert not any(d.startswith("gp_activations.search") for d in graph["gp_activations.train"])
    # no cycles, lazy (function-level) imports included -- but for the one documented UPWARD one
    for m, d in UPWARD:
        graph[m] = graph[m] - {d}
    state: dict = {}

    def visit(node, path):
        state[node] = "open"
        for dep in graph.get(node, ()):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join(path + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_one_zoo_or_expression_resolver():
    assert zoo.resolve("silu") == zoo.get("silu")
    assert zoo.resolve("swish_beta").params == (3,)
    assert zoo.resolve("mul(x, erf(x))", params=[2]).params == (2,)
    assert zoo.resolve("relu(x)", "minimal").primitives == "minimal"
    with pytest.raises(UserError, match="takes 1 argument"):
        zoo.resolve("relu", "minimal")  # zoo names are pangaea trees
    with pytest.raises(UserError):
        zoo.resolve(3)


def test_tables_and_reports_survive_a_function_without_latex(tmp_path):
    from gp_activations.activation import latex_or_note

    deep = Activation.from_string("sin(" * 3000 + "x" + ")" * 3000)
    note = latex_or_note(deep)
    assert note.startswith("(no LaTeX: expression is") and "--format torch or json" in note
    assert latex_or_note(zoo.get("silu")) == zoo.get("silu").latex()
    run = tmp_path / "run"
    cfg = dict(CHEAP, generations=1, population=1, param_variants=0,
               init_expressions=["sin(" * 3000 + "x" + ")" * 3000], max_height=4000, max_size=4000)
    result = run_search(SearchConfig(**cfg), out=run, progress=False,
                        fitness=f"{HELPERS}:score_fitness")
    assert "(no LaTeX" in result.table() or all(t["expression"] != deep.expression for t in result.top)
    assert write_report(run, k=2).is_file()


#: The one import against the flow: ``Activation.from_run`` (a convenience on the central object)
#: reads a run through the assess layer, lazily, inside the method.
UPWARD = {("gp_activations.activation", "gp_activations.report")}

#: The package's layers, in the order the data flows (README, "Layout"): a module imports only
#: from its own layer or earlier ones, lazy imports included.  A new module must be placed here.
LAYERS = [
    ("foundations", {"errors", "references", "progress", "statistics", "kernels", "_partition"}),
    ("expressions", {"expression", "operators", "primitive_sets"}),
    ("compile", {"codegen", "fusion", "compiled", "normalization"}),
    ("functions", {"activation", "zoo", "search.screening"}),
    ("render", {"tables"}),
    ("nets", {"data", "models", "replace", "adapt"}),
    ("fitness", {"train", "tabular"}),
    ("runtime", {"search.jobs", "search.worker", "search.executors", "search.store"}),
    ("search", {"search.config", "search.evolution", "search.strategies", "search.surrogate",
                "search.fidelities", "search.plan", "search.randomness", "search.generation",
                "search.ranking", "search.race", "search.results", "search.monitor",
                "search.driver"}),
    ("assess", {"evaluate", "transfer", "report"}),
    ("cli", {"cli"}),
]


def test_imports_point_one_way_through_the_layers():
    graph = _import_graph()
    layer_of = {f"gp_activations.{m}": i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    unplaced = sorted(set(graph) - set(layer_of))
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"
    assert not sorted(set(layer_of) - set(graph)), "LAYERS names a module that does not exist"
    backwards = [f"{m} ({LAYERS[layer_of[m]][0]}) imports {d} ({LAYERS[layer_of[d]][0]})"
                 for m, deps in graph.items() for d in deps
                 if d in layer_of and layer_of[d] > layer_of[m] and (m, d) not in UPWARD]
    assert backwards == []
    assert sum(len(deps) for deps in graph.values()) > 50  # the graph was really read
