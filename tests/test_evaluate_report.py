"""Final evaluation, reports and export of a (tiny) search run, and their bad input.

One digits search (4 functions, one parametric variant each, one epoch of fitness
training) is shared by the module; it is evaluated once (top functions + ReLU and SiLU, two
seeds, one epoch) and then reported on and exported from.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import re
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
import sympy
import torch
from scipy import stats

import gp_activations.train as train_mod
from gp_activations import zoo
from gp_activations.activation import Activation
from gp_activations.cli import main
from gp_activations.errors import UserError
from gp_activations.evaluate import evaluate_run, protocol_key, welch_p
from gp_activations.data import get_dataset_info
from gp_activations.models import activation_sites, build_model
from gp_activations.report import export_from_run, write_report
from gp_activations.search import RunStore, SearchConfig, run_search
from search_helpers import stored


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CSV_COLUMNS = ["label", "kind", "expression", "params", "n", "mean", "std", "p_vs_relu", "best",
               "accuracies", "failed"]
# Fitness: one epoch at a higher learning rate than the final evaluation's (3e-3), so that the
# learned scalars of the two trainings differ.
TINY = dict(dataset="digits", population=4, generations=1, param_variants=1, epochs=1,
            train={"lr": 1e-2}, init_zoo=False, threads=1, seed=0,
            init_expressions=["mul(x, sigmoid(x))", "relu(x)", "add(x, tanh(x))"])
EVAL_ARGS = dict(seeds=2, epochs=1, baselines=["relu", "silu"], executor="serial", progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cli_error(capsys, argv) -> str:
    """Run the CLI expecting bad input: status 2 and exactly one line on stderr."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("gp-activations: error: "), err
    assert "Traceback" not in err and "Traceback" not in out
    return err


def _baseline_of(candidate):
    """The name of the baseline (of EVAL_ARGS) that ``candidate`` is, as the zoo writes it."""
    names = {(zoo.get(n).expression, tuple(zoo.get(n).params)): n for n in EVAL_ARGS["baselines"]}
    return names.get((candidate.expression, tuple(candidate.params)))


def _final_rows(run_dir) -> list[dict]:
    store = RunStore.open(run_dir, readonly=True)
    rows = [stored(r) for r in store.final_trainings()]
    store.close()
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "evolution"
    run_search(SearchConfig(**TINY), out=out, progress=False)
    store = RunStore.open(out)
    top = store.top_functions()
    store.close()
    ranks = [i for i, t in enumerate(top, 1) if t["candidate"].params]
    assert ranks, "the tiny search should finish at least one parametric variant"
    prank = ranks[0]
    # learned values as exported before the final evaluation (from the fitness training)
    before = json.loads(export_from_run(out, rank=prank, fmt="json", with_learned=True))
    top_k = max(2, prank)  # evaluate the parametric one too
    rows = evaluate_run(out, top=top_k, **EVAL_ARGS)
    return SimpleNamespace(dir=out, top=top, prank=prank, top_k=top_k, rows=rows,
                           learned_before=before["learned"])


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
def test_results_csv_columns_and_statistics(run):
    with open(run.dir / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    # a found function that is one of the baselines (as written in the zoo) says so
    same = [_baseline_of(t["candidate"]) for t in run.top[:run.top_k]]
    labels = [f"found #{i}" + (f" = {eq}" if eq else "") for i, eq in enumerate(same, 1)]
    assert [r["label"] for r in rows] == labels + ["relu", "silu"]
    assert [r["kind"] for r in rows] == ["found"] * run.top_k + ["baseline"] * 2
    for r, item in zip(rows[:run.top_k], run.top):
        assert r["expression"] == item["candidate"].expression
        assert json.loads(r["params"]) == list(item["candidate"].params)
    assert rows[-2]["expression"] == "relu(x)" and rows[-1]["expression"] == "mul(x, sigmoid(x))"

    relu = [float(a) for a in rows[-2]["accuracies"].split()]
    for r, full in zip(rows, run.rows):
        accs = [float(a) for a in r["accuracies"].split()]
        assert int(r["n"]) == len(accs) == 2 and full.n == 2
        assert accs == pytest.approx(full.accuracies, abs=1e-6)
        assert all(0.0 < a <= 1.0 for a in accs)
        assert float(r["mean"]) == pytest.approx(statistics.fmean(accs), abs=2e-6)
        assert float(r["std"]) == pytest.approx(statistics.stdev(accs), abs=2e-6)
        assert full.std == pytest.approx(statistics.stdev(full.accuracies), rel=1e-12)
        if r["label"] == "relu" or r["label"].endswith(" = relu"):  # relu's own trainings
            assert r["p_vs_relu"] == "" and full.p_vs_ref is None
            continue
        if statistics.pvariance(accs) == 0 and statistics.pvariance(relu) == 0:
            expected = 1.0 if accs[0] == relu[0] else 0.0  # scipy: nan; defined here
        else:
            expected = stats.ttest_ind(full.accuracies, run.rows[-2].accuracies,
                                       equal_var=False).pvalue
            assert float(r["p_vs_relu"]) == pytest.approx(
                stats.ttest_ind(accs, relu, equal_var=False).pvalue, rel=1e-3)
        assert full.p_vs_ref == pytest.approx(expected, rel=1e-9)
        assert float(r["p_vs_relu"]) == pytest.approx(expected, rel=1e-5)
    best = [r for r in rows if r["best"] == "1"]
    assert len(best) == 1 and all(r["best"] in ("0", "1") for r in rows)
    assert float(best[0]["mean"]) == max(float(r["mean"]) for r in rows)


def test_results_tex_is_a_booktabs_table(run):
    tex = (run.dir / "results.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")].strip().splitlines()[1:]
    assert len(body) == run.top_k + 2 and all(line.endswith(r"\\") for line in body)
    assert body[0].startswith(r"found \#1 & $") and tex.count(r"\textbf") == 1
    assert tex.startswith(r"\begin{table}") and r"\end{tabular}" in tex


def test_welch_p_matches_scipy_and_handles_degenerate_samples():
    a, b = [0.91, 0.93, 0.92], [0.89, 0.90]
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p([0.9], b) is None
    assert welch_p([0.9, 0.9], [0.9, 0.9]) == 1.0
    assert welch_p([0.9, 0.9], [0.8, 0.8]) == 0.0


def test_protocol_does_not_depend_on_how_epochs_were_spelled():
    cfg = train_mod.default_config("digits", "train")
    assert (protocol_key(cfg.replace(epochs=20.0).to_dict(), "digits", None)
            == protocol_key(cfg.to_dict(), "digits", None))
    assert (protocol_key(cfg.replace(epochs=2.5).to_dict(), "digits", None)
            != protocol_key(cfg.to_dict(), "digits", None))


@pytest.fixture
def count_trainings(monkeypatch):
    calls = []
    real = train_mod.train

    def counting(*args, **kwargs):
        calls.append(kwargs.get("seed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train", counting)
    return calls


def test_evaluate_resumes_without_retraining(run, capsys, count_trainings):
    before_rows = _final_rows(run.dir)
    before_csv = (run.dir / "results.csv").read_text()
    # a found function that is a baseline trains once, as the baseline
    aliases = sum(_baseline_of(t["candidate"]) is not None for t in run.top[:run.top_k])
    assert len(before_rows) == (run.top_k - aliases + 2) * 2
    assert all(r["status"] == "done" for r in before_rows)
    argv = ["evaluate", str(run.dir), "--top", str(run.top_k), "--seeds", "2", "--epochs", "1",
            "--baselines", "relu,silu", "--executor", "serial", "--no-progress"]
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    assert "found #1" in out and "results.csv" in out
    assert count_trainings == []  # nothing trained again
    assert _final_rows(run.dir) == before_rows  # ids, accuracies, finished_at unchanged
    assert (run.dir / "results.csv").read_text() == before_csv

    # a training that was in flight when the evaluation was killed is redone, and only that one
    victim = before_rows[1]
    store = RunStore.open(run.dir)
    store.start_final(victim["id"])  # as if it had been killed mid-training
    store.close()
    assert main(argv) == 0
    capsys.readouterr()
    assert count_trainings == [victim["seed"]]
    after = {(r["label"], r["seed"]): r for r in _final_rows(run.dir)}
    redone = after[(victim["label"], victim["seed"])]
    assert redone["status"] == "done" and redone["accuracy"] == victim["accuracy"]  # deterministic
    assert redone["finished_at"] > victim["finished_at"]
    others = [r for r in before_rows if r["id"] != victim["id"]]
    assert all(after[(r["label"], r["seed"])] == r for r in others)
    assert (run.dir / "results.csv").read_text() == before_csv


def test_changed_ranking_does_not_mix_two_functions_under_one_label(run, tmp_path,
                                                                    count_trainings):
    copy = tmp_path / "copy"
    shutil.copytree(run.dir, copy)
    store = RunStore.open(copy)
    # the best function after #1 that is not a baseline (a baseline trains as itself)
    second = next(t for t in store.top_functions()[1:] if _baseline_of(t["candidate"]) is None)
    with store.transaction():  # the search went on, and the former #2 is now the best
        store.update_candidate(second["candidate"].id, fitness=0.999)
    store.close()
    rows = evaluate_run(copy, top=1, **{**EVAL_ARGS, "seeds": 1})
    assert count_trainings == [0]  # found #1, seed 0: the new function
    found = rows[0]
    assert found.label == "found #1" and found.expression == second["candidate"].expression
    assert found.n == 1  # not averaged with the old #1's seed 1
    relu = next(r for r in rows if r.label == "relu")
    assert relu.n == 1  # statistics use exactly the requested seeds, for every activation alike


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _check_report(report_md: Path) -> list[Path]:
    text = report_md.read_text()
    targets = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert targets, text
    pngs = sorted(report_md.parent.glob("*.png"))
    assert sorted(report_md.parent / t for t in targets) == pngs  # each linked, each exists
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
        assert image.std() > 0  # not a blank canvas
    return pngs


def test_report_writes_linked_valid_images(run, capsys):
    assert main(["report", str(run.dir)]) == 0
    out, _ = capsys.readouterr()
    report_md = run.dir / "report" / "report.md"
    assert "wrote" in out and str(report_md) in out
    pngs = _check_report(report_md)
    assert {p.name for p in pngs} == {"shapes.png", "fitness.png", "params_depth.png",
                                      "params_epochs.png"}
    text = report_md.read_text()
    assert "## Final evaluation (test set)" in text and "| found #1 |" in text
    final = text[text.index("## Final evaluation"):]
    assert final.count("**") == 2  # one best mean in bold
    assert "## Learned parameters" in text
    top_lines = [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(top_lines) == min(4, len(run.top))
    # the API, with fewer functions
    path = write_report(run.dir, k=1)
    assert path == report_md
    assert len([ln for ln in path.read_text().splitlines() if re.match(r"^\| \d+ \|", ln)]) == 1


def test_report_compares_with_a_random_search(run, tmp_path, capsys):
    other = tmp_path / "random"
    run_search(SearchConfig(**{**TINY, "strategy": "random", "init_expressions": ["relu(x)"]}),
               out=other, progress=False)
    assert main(["report", str(run.dir), "--compare", str(other)]) == 0
    capsys.readouterr()
    report_md = run.dir / "report" / "report.md"
    _check_report(report_md)
    text = report_md.read_text()
    assert "| run | strategy | seed | trainings | best fitness |" in text
    assert f"| `{run.dir.name}` | evolution | 0 |" in text and f"| `{other.name}` | random | 0 |" in text
    # the per-strategy summary of the ablation: one row per strategy with mean ± std
    best = {s: float(line.split("|")[3].split("±")[0]) for s in ("evolution", "random")
            for line in text.splitlines() if line.startswith(f"| {s} | 1 |")}
    assert set(best) == {"evolution", "random"} and all(0 < v <= 1 for v in best.values())
    # a run without a final evaluation says so
    assert main(["report", str(other)]) == 0
    capsys.readouterr()
    _check_report(other / "report" / "report.md")
    assert "Not run yet" in (other / "report" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def _expected_sites(run) -> tuple[list, str]:
    """Per-site learned values of the parametric function, read straight from the database."""
    store = RunStore.open(run.dir)
    cand = run.top[run.prank - 1]["candidate"]
    (final,) = [r for r in store.final_trainings(status="done", labels=[f"found #{run.prank}"])
                if r.seed == 0]
    store.close()
    fitness_traj = cand.metrics["param_trajectory"]
    final_traj = final.metrics["param_trajectory"]
    assert fitness_traj[-1] != final_traj[-1]  # the two trainings learned different values
    return list(final_traj[-1].values()), list(fitness_traj[-1].values())


def _import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"exported_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_torch_with_learned_params(run, tmp_path, capsys):
    target = tmp_path / "evolved.py"
    assert main(["export", str(run.dir), "--rank", str(run.prank), "--format", "torch",
                 "--with-learned-params", "--out", str(target)]) == 0
    capsys.readouterr()
    source = target.read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"torch"}

    cand = run.top[run.prank - 1]["candidate"]
    act = Activation.from_string(cand.expression, cand.primitives, cand.params)
    assert act.slots
    sites, fitness_sites = _expected_sites(run)
    assert len(sites) == 3  # cnn_digits has three activation sites
    assert any(v != 1.0 for site in sites for v in site.values())  # really learned
    exported = _import_file(target)
    assert len(exported.LEARNED) == len(sites)
    # the sites carry their names in the trained network (cnn_digits), in network order
    net = build_model(get_dataset_info("digits").default_model, torch.nn.ReLU)
    names = [name for name, _ in activation_sites(net)]
    assert exported.SITES == list(exported.LEARNED) == names
    assert [exported.LEARNED[n] for n in names] == sites
    x = torch.linspace(-4, 4, 101).reshape(1, 101)
    for i, values in enumerate(sites):
        layer = exported.EvolvedActivation(site=i)
        assert layer.site == names[i]
        assert torch.equal(exported.EvolvedActivation(site=names[i])(x), layer(x))
        reference = act.module()
        with torch.no_grad():
            for name, value in values.items():
                getattr(reference, name).fill_(value)
            got = layer(x)
            assert torch.allclose(got, reference(x), atol=1e-6)
            assert torch.allclose(got, act(x, values=values), atol=1e-6)
            assert not torch.allclose(got, act(x), atol=1e-4)  # not the initial function
    # no silent fallback: a site that does not exist is an error naming the sites
    with pytest.raises(ValueError, match=r"site 3 is out of range: 3 sites"):
        exported.EvolvedActivation(site=3)
    with pytest.raises(KeyError, match="unknown site 'layer1.0.act1'"):
        exported.EvolvedActivation(site="layer1.0.act1")
    # site=None: the mean over sites, the function the latex/json exports print
    default = exported.EvolvedActivation()
    for k in act.slot_names:
        assert getattr(default, k).item() == pytest.approx(statistics.fmean(s[k] for s in sites))
    # onto the network they were learned in, by module name
    exported.EvolvedActivation.apply_to(net)
    applied = [(n, m.site) for n, m in net.named_modules()
               if isinstance(m, exported.EvolvedActivation)]
    assert applied == list(zip(names, names))
    # before the final evaluation, the values came from the fitness training
    mean = {k: statistics.fmean(s[k] for s in fitness_sites) for k in act.slot_names}
    assert run.learned_before == pytest.approx(mean)


def test_export_latex_sympy_json(run, capsys):
    top1 = run.top[0]
    for fmt in ("latex", "sympy", "json"):
        assert main(["export", str(run.dir), "--rank", "1", "--format", fmt]) == 0
        out, err = capsys.readouterr()
        assert out.strip(), (fmt, err)
        if fmt == "json":
            data = json.loads(out)
            assert data["fitness"] == pytest.approx(top1["fitness"])
            assert Activation.from_json(data).expression == top1["candidate"].expression
        elif fmt == "sympy":
            assert sympy.sympify(out.strip()).free_symbols
    # the parametric one: symbols without learned values, numbers with them
    base = ["export", str(run.dir), "--rank", str(run.prank)]
    assert main(base + ["--format", "latex"]) == 0
    symbolic = capsys.readouterr().out
    assert main(base + ["--format", "latex", "--with-learned-params"]) == 0
    learned = capsys.readouterr().out
    assert "p_{0}" in symbolic and "p_{" not in learned and symbolic != learned
    assert main(base + ["--format", "json", "--with-learned-params"]) == 0
    data = json.loads(capsys.readouterr().out)
    sites, _ = _expected_sites(run)
    assert data["learned"] == pytest.approx(
        {k: statistics.fmean(s[k] for s in sites) for k in data["learned"]})
    assert main(base + ["--format", "sympy", "--with-learned-params"]) == 0
    expr = sympy.sympify(capsys.readouterr().out.strip())
    assert {s.name for s in expr.free_symbols} == {"x"}


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def not_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("not_runs")
    plain = root / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    a_file = root / "file.txt"
    a_file.write_text("x")
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "run.sqlite").write_bytes(b"definitely not sqlite " * 100)
    fresh = root / "fresh"
    RunStore.create(fresh, SearchConfig(dataset="digits").to_dict()).close()
    rejected = root / "rejected"
    store = RunStore.create(rejected, SearchConfig(dataset="digits").to_dict())
    with store.transaction():
        for expr in ("relu(x)", "tanh(x)"):
            store.add_candidate(expression=expr, primitives="pangaea", status="rejected",
                                generation=0, error="too slow")
    store.close()
    return SimpleNamespace(plain=plain, file=a_file, missing=root / "missing", corrupt=corrupt,
                           fresh=fresh, rejected=rejected)


@pytest.mark.parametrize("which", ["plain", "file", "missing", "corrupt", "fresh", "rejected"])
@pytest.mark.parametrize("command", [["evaluate", "{}", "--no-progress"], ["report", "{}"],
                                     ["export", "{}", "--format", "torch"]])
def test_commands_on_something_that_is_not_a_finished_run(capsys, not_runs, which, command):
    path = getattr(not_runs, which)
    err = _cli_error(capsys, [c.replace("{}", str(path)) for c in command])
    if which in ("fresh", "rejected"):
        assert "no finished candidates" in err and "--resume" in err
    else:
        assert str(path) in err


@pytest.mark.parametrize("args, words", [
    (["export", "{run}", "--rank", "99"], "--rank 99 does not exist"),
    (["export", "{run}", "--rank", "0"], "--rank must be >= 1"),
    (["export", "{run}", "--format", "pdf"], "invalid choice"),
    (["evaluate", "{run}", "--baselines", "relu,nope", "--no-progress"], "unknown baseline 'nope'"),
    (["evaluate", "{run}", "--seeds", "0", "--no-progress"], "--seeds"),
    (["evaluate", "{run}", "--top", "-1", "--no-progress"], "--top"),
    (["evaluate", "{run}", "--epochs", "0", "--no-progress"], "epochs"),
    (["evaluate", "{run}", "--dataset", "imagenet", "--no-progress"], "unknown dataset"),
    (["evaluate", "{run}", "--model", "resnet9000", "--no-progress"], "unknown model"),
    (["report", "{run}", "--top", "0"], "--top"),
    (["report", "{run}", "--compare", "{missing}"], "is not a directory"),
])
def test_bad_arguments_on_a_run(run, capsys, tmp_path, count_trainings, args, words):
    argv = [a.format(run=run.dir, missing=tmp_path / "missing") for a in args]
    rows = _final_rows(run.dir)
    err = _cli_error(capsys, argv)
    assert words in err
    assert count_trainings == [] and _final_rows(run.dir) == rows  # nothing happened


def test_unknown_baseline_from_the_api(run):
    with pytest.raises(UserError, match="unknown baseline 'swoosh'"):
        evaluate_run(run.dir, top=1, seeds=1, baselines=["relu", "swoosh"], progress=False)


def test_a_run_searched_with_a_fitness_function_needs_a_dataset_and_model(tmp_path, capsys):
    helpers = tmp_path / "fitness_here.py"
    helpers.write_text("def score(act, seed):\n    return 0.5 + 0.01 * len(act.expression) % 7\n")
    run = tmp_path / "fitness-run"
    run_search(SearchConfig(population=2, generations=1, param_variants=0, init_zoo=False,
                            fitness=f"{helpers}:score", init_expressions=["tanh(x)", "relu(x)"]),
               out=run, progress=False)
    assert main(["evaluate", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "searched with a fitness function" in err[0]
    assert not list(run.glob("results*.csv"))  # nothing trained, nothing written
    assert main(["evaluate", str(run), "--dataset", "digits", "--model", "cnn_digits", "--top", "1",
                 "--seeds", "1", "--epochs", "1", "--baselines", "relu", "--executor", "serial",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert (run / "results_digits_cnn_digits.csv").is_file()


@pytest.mark.parametrize("p, text", [(None, ""), (0.2826, "0.283"), (0.001, "0.001"),
                                     (2.18518e-08, "2.2e-08"), (0.0, "0.0e+00")])
def test_p_values_never_print_as_zero_when_tiny(p, text):
    from gp_activations.evaluate import format_p

    assert format_p(p) == text


def test_a_reranked_function_keeps_its_finished_trainings(tmp_path):
    """found #1 and #2 swap (a longer search, a final race): each function's finished seeds
    follow it to its new label; a function that leaves the ranking keeps its rows aside."""
    from gp_activations.search import RunStore, SearchConfig

    store = RunStore.create(tmp_path / "run", SearchConfig(dataset="digits").to_dict())
    P = "protocol"
    store.schedule_final("found #1", "found", "tanh(x)", "pangaea", [], 1, 2, P)
    store.schedule_final("found #2", "found", "relu(x)", "pangaea", [], 2, 2, P)
    acc = {"tanh(x)": 0.7, "relu(x)": 0.8}
    for r in store.final_trainings(P):
        store.finish_final(r.id, "done", acc[r.expression] + r.seed / 100, {})
    store.schedule_final("found #1", "found", "relu(x)", "pangaea", [], 2, 2, P)
    store.schedule_final("found #2", "found", "tanh(x)", "pangaea", [], 1, 3, P)
    rows = {(r.label, r.seed): (r.expression, r.status, r.accuracy) for r in store.final_trainings(P)}
    assert rows == {("found #1", 0): ("relu(x)", "done", 0.8), ("found #1", 1): ("relu(x)", "done", 0.81),
                    ("found #2", 0): ("tanh(x)", "done", 0.7), ("found #2", 1): ("tanh(x)", "done", 0.71),
                    ("found #2", 2): ("tanh(x)", "pending", None)}
    # a third function takes rank 2: tanh's rows move aside, and come back with it
    store.schedule_final("found #2", "found", "sigmoid(x)", "pangaea", [], 3, 1, P)
    assert {r.label for r in store.final_trainings(P) if r.expression == "tanh(x)"} == \
        {"unranked: tanh(x) @ []"}
    store.schedule_final("found #3", "found", "tanh(x)", "pangaea", [], 1, 2, P)
    assert sorted((r.seed, r.status) for r in store.final_trainings(P, labels=["found #3"])) == \
        [(0, "done"), (1, "done"), (2, "pending")]
    store.close()
