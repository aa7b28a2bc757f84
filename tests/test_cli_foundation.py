"""The foundation commands: `gp-activations primitives | zoo | export`.  Bad input is one line on
stderr starting `gp-activations: error:`, exit status 2, never a traceback."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gp_activations import Activation, zoo
from gp_activations.cli import main
from gp_activations.primitive_sets import load_primitive_set

CONSOLE_SCRIPT = Path(sys.executable).with_name("gp-activations")
ERROR = "gp-activations: error: "


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR) and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------------------------------------
# real processes (each costs an interpreter start with torch; run them side by side)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    target = tmp / "pwned"
    bad_file = tmp / "broken_space.py"
    bad_file.write_text("from gp_activations import SearchSpace\nspace = SearchSpace('b')\n"
                        "space.use('add')\nraise ValueError('line four')\n")
    module = [sys.executable, "-m", "gp_activations.cli"]
    script = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else module
    commands = {
        "payload": module + ["export", "--expr", f"__import__('os').system('touch {target}')"],
        "unbalanced": script + ["export", "--expr", "mul(x, sigmoid(x)"],
        "bad_file": module + ["primitives", str(bad_file)],
    }
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    running = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env, cwd=tmp)
               for k, c in commands.items()}
    results = {}
    for key, proc in running.items():
        out, err = proc.communicate(timeout=120)
        results[key] = (proc.returncode, out, err)
    return results, target, bad_file


def test_process_rejects_code_in_expression(processes):
    results, target, _ = processes
    code, out, err = results["payload"]
    assert_one_line_error(code, err, "unknown name '__import__'", "(at position 0)")
    assert out == "" and not target.exists()


def test_console_script_unbalanced_parenthesis(processes):
    code, out, err = processes[0]["unbalanced"]
    assert_one_line_error(code, err, "missing ')' to close mul(", "(at position 0)")


def test_process_primitives_file_raising(processes):
    results, _, bad_file = processes
    code, _, err = results["bad_file"]
    assert_one_line_error(code, err, f"{bad_file}:4:", "ValueError: line four")


# ---------------------------------------------------------------------------------------------
# in-process: the same main(), many inputs
# ---------------------------------------------------------------------------------------------
def test_primitives_listing(capsys):
    code, out, err = run_main(capsys, "primitives", "pangaea")
    assert code == 0, err
    assert out.splitlines()[0].startswith("pangaea: PANGAEA")
    pset = load_primitive_set("pangaea")
    rows = {}
    for line in out.splitlines()[2:]:
        name, arity, rest = line.split(None, 2)
        rows[name] = (int(arity), rest)
    assert set(rows) == {"x", *pset.constants, *pset.operators}
    for name, op in pset.operators.items():
        assert rows[name][0] == op.arity
        assert rows[name][1].startswith(op.latex())
    assert rows["sigmoid"][1].startswith(r"\sigma\left(x\right)")
    assert rows["mul"][1].startswith(r"x_{1} x_{2}")


@pytest.mark.parametrize("expr, fragment", [
    ("mul(x, x))", "(at position 9)"),
    ("foo(x)", "unknown name 'foo'"),
    ("mul(x)", "takes 2 arguments, got 1"),
    ("", "empty expression"),
    ("relu(x) relu(x)", "after the end of the expression"),
    ("mul(x, 1e999)", "non-finite literal '1e999'"),
    ("inf", "non-finite literal 'inf'"),
    ("nan", "non-finite literal 'nan'"),
    ("relu(x)\nimport os", "after the end of the expression"),
])
def test_export_bad_expression(capsys, expr, fragment):
    code, out, err = run_main(capsys, "export", "--expr", expr)
    assert_one_line_error(code, err, fragment, "(at position")
    assert out == ""


@pytest.mark.parametrize("argv, fragment", [
    (["export", "--expr", "relu(x)", "--params", "a,b"], "--params must be comma-separated"),
    (["export", "--expr", "relu(x)", "--params", "7"], "outside the tree's nodes"),
    (["export", "--expr", "relu(x)", "--format", "pdf"], "invalid choice: 'pdf'"),
    (["export", "--expr", "relu(x)", "--primitives", "nowhere"], "unknown search space 'nowhere'"),
    (["export", "--expr", "exp(x)", "--primitives", "minimal"], "unknown name 'exp'"),
    (["export"], "give --expr"),
    (["export", "--bogus"],
     "export: unrecognized arguments: --bogus (see gp-activations export --help)"),
    (["train", "--act", "relu", "--bogus", "1"],
     "train: unrecognized arguments: --bogus 1 (see gp-activations train --help)"),
    (["--bogus"], "error: unrecognized arguments: --bogus (see gp-activations --help)"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["zoo", "nope"], "unknown zoo activation 'nope'"),
    (["primitives", "/no/such/space.py"], "primitives file not found: /no/such/space.py"),
    (["primitives", "no_such_module_q:space"], "cannot import module 'no_such_module_q'"),
])
def test_bad_arguments(capsys, argv, fragment):
    code, _, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, fragment)
    assert err.count("gp-activations:") == 1  # no doubled program name


def test_primitives_file_errors_name_file_and_line(capsys, tmp_path):
    head = "from gp_activations import SearchSpace\nspace = SearchSpace('b')\n"
    cases = {"syntax.py": (head + "space.use('add'\n", ":3:", "syntax error"),
             "raises.py": (head + "space.use('add')\n\n1 / 0\n", ":5:", "ZeroDivisionError"),
             "nospace.py": ("x = 1\n", "", "no SearchSpace")}
    for name, (text, line, fragment) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        code, _, err = run_main(capsys, "primitives", str(path))
        assert_one_line_error(code, err, f"{path}{line}", fragment)


def test_primitives_overview_and_user_file(capsys, tmp_path):
    code, out, _ = run_main(capsys, "primitives")
    assert code == 0
    assert re.search(r"pangaea\s+24 unary,\s+7 binary", out)
    assert re.search(r"swish_search\s+25 unary,\s+10 binary", out)
    assert re.search(r"minimal\s+8 unary,\s+4 binary", out)
    path = tmp_path / "tiny_space.py"
    path.write_text("import torch, sympy\nfrom gp_activations import SearchSpace\n"
                    "space = SearchSpace('tiny', 'one op')\nspace.use('mul')\n"
                    "@space.unary(sympy=lambda x: sympy.atan(x) ** 2)\n"
                    "def atan2x(x):\n    return torch.atan(x) ** 2\n")
    code, out, _ = run_main(capsys, "primitives", str(path))
    assert code == 0 and out.splitlines()[0] == "tiny: one op"
    assert re.search(r"^atan2x\s+1\s+\\operatorname\{atan\}\^\{2\}\{\\left\(x \\right\)\}", out, re.M)
    assert re.search(r"^mul\s+2\s+x_\{1\} x_\{2\}", out, re.M)


def test_export_formats(capsys, tmp_path):
    code, out, _ = run_main(capsys, "export", "--expr", "gelu")
    assert code == 0 and r"\operatorname{erf}" in out
    code, out, _ = run_main(capsys, "export", "--expr", "mul(x, sigmoid(x))", "--params", "3",
                            "--format", "sympy")
    assert code == 0 and out.strip() == "x*sigmoid(p_0*x)"
    code, out, _ = run_main(capsys, "export", "--expr", "silu", "--format", "json")
    assert code == 0 and Activation.from_json(out) == zoo.get("silu")
    assert json.loads(out)["expression"] == "mul(x, sigmoid(x))"
    target = tmp_path / "out" / "act.py"
    code, out, err = run_main(capsys, "export", "--expr", "mish", "--format", "torch",
                              "--out", str(target))
    assert code == 0 and out == "" and f"wrote {target}" in err
    source = target.read_text()
    tree = ast.parse(source)
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imports == {"torch"} and not any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    namespace = {}
    exec(compile(source, str(target), "exec"), namespace)  # our own export
    x = torch.randn(50) * 3
    torch.testing.assert_close(namespace["EvolvedActivation"]()(x), torch.nn.functional.mish(x))


def test_zoo_listing(capsys):
    code, out, _ = run_main(capsys, "zoo")
    assert code == 0
    for name in zoo.names():
        assert re.search(rf"^{name}\s", out, re.M)
    assert r"x \sigma\left(x\right)" in out
    code, out, _ = run_main(capsys, "zoo", "softsign")
    assert code == 0 and "class Softsign(torch.nn.Module)" in out
