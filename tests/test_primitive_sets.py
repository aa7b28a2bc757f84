"""Search-space files: user operators (by path and module:attr), their export, and errors in
such files reported as one UserError naming the file and line."""

from __future__ import annotations

import importlib.util
import textwrap

import numpy as np
import pytest
from conftest import imported_modules
import sympy
import torch

from gp_activations import Activation, SearchSpace, UserError, load_primitive_set
from gp_activations import operators as ops
from gp_activations.primitive_sets import ActivationPrimitiveSet, builtin_names, describe

USER_SPACE = '''\
"""A user's search space."""
import sympy
import torch

from gp_activations import SearchSpace

space = SearchSpace("mine", "sigmoidal units and a log")
space.use("add", "mul", "max", "sigmoid", "tanh", "relu")
space.constants("one", half=0.5)


@space.unary(sympy=lambda x: sympy.log(1 + x**2))
def log1psq(x):
    "log(1 + x²), finite for every finite x below 1.8e19"
    return torch.log1p(x * x)


@space.binary(name="softmax2", sympy=lambda a, b: sympy.log(sympy.exp(a) + sympy.exp(b)))
def smooth_max(a, b):
    return torch.logaddexp(a, b)


@space.unary
def bump(x):
    return torch.exp(-torch.abs(x))
'''

EXPR = "add(log1psq(x), mul(half, softmax2(x, bump(x))))"


def _oracle(x):
    x = np.asarray(x, dtype=float)
    return np.log1p(x * x) + 0.5 * np.logaddexp(x, np.exp(-np.abs(x)))


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_space.py"
    path.write_text(USER_SPACE)
    return path


def _check_user_space(pset, tmp_path, tag):
    assert isinstance(pset, ActivationPrimitiveSet)
    assert set(pset.operators) == {"add", "mul", "max", "sigmoid", "tanh", "relu",
                                   "log1psq", "softmax2", "bump"}
    assert pset.constants == {"one": 1.0, "half": 0.5}
    assert pset.operators["softmax2"].arity == 2 and pset.operators["log1psq"].user_defined
    act = Activation.from_string(EXPR, pset)
    x = torch.linspace(-6, 6, 49, dtype=torch.float64)
    np.testing.assert_allclose(act(x).numpy(), _oracle(x.numpy()), rtol=1e-12)
    np.testing.assert_allclose(act.module()(x).detach().numpy(), _oracle(x.numpy()), rtol=1e-12)
    # the sympy forms the user gave are the mathematical function
    f = sympy.lambdify(sympy.Symbol("x", real=True), act.sympy(),
                       modules=[ops.numeric_namespace(pset.operators), "numpy"])
    np.testing.assert_allclose(f(x.numpy()), _oracle(x.numpy()), rtol=1e-12)
    assert r"\log" in act.latex() and r"\operatorname{bump}" in act.latex()
    # torch export embeds the functions' source and imports nothing but torch
    source = act.torch_source()
    assert imported_modules(source) == {"torch"}
    assert "def log1psq(x):" in source and "def smooth_max(a, b):" in source
    assert "@space" not in source and "gp_activations" not in source.split('"""', 2)[2]
    path = tmp_path / f"exported_{tag}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"exported_{tag}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.testing.assert_close(module.EvolvedActivation()(x), act(x), rtol=0, atol=0)
    # and JSON names the space so that it can be loaded again
    assert Activation.from_json(act.to_json()) == act
    return act


def test_user_file_by_path(user_file, tmp_path):
    pset = load_primitive_set(str(user_file))
    assert pset.spec == str(user_file.resolve()) and pset.name == "mine"
    assert load_primitive_set(user_file) is pset  # a PathLike too, cached
    act = _check_user_space(pset, tmp_path, "path")
    assert act.primitives == str(user_file.resolve())


def test_user_file_by_module_attr(user_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    pset = load_primitive_set("my_space:space")
    assert pset.spec == "my_space:space"
    _check_user_space(pset, tmp_path, "attr")
    assert Activation.from_string("bump(x)", "my_space:space").primitives == "my_space:space"


def test_search_space_object_and_callable(tmp_path, monkeypatch):
    (tmp_path / "space_factory_mod.py").write_text(textwrap.dedent('''\
        from gp_activations import SearchSpace

        def make():
            return SearchSpace("made").use("tanh", "mul")

        number = 3
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert set(load_primitive_set("space_factory_mod:make").operators) == {"tanh", "mul"}
    with pytest.raises(UserError, match="is a int; expected a SearchSpace"):
        load_primitive_set("space_factory_mod:number")
    with pytest.raises(UserError, match="has no attribute 'nope'"):
        load_primitive_set("space_factory_mod:nope")
    with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
        load_primitive_set("no_such_module_xyz:space")
    space = SearchSpace("inline").use("sin")
    assert set(load_primitive_set(space).operators) == {"sin"}


def test_same_operator_name_in_two_spaces_does_not_mix_implementations(tmp_path):
    """Compiled functions are cached by source text; user functions must be part of the key."""
    paths = []
    for i, body in enumerate(["return 2.0 * x", "return 3.0 * x"]):
        path = tmp_path / f"space_{i}.py"
        path.write_text(f"from gp_activations import SearchSpace\nspace = SearchSpace('s{i}')\n"
                        f"@space.unary\ndef twice(x):\n    {body}\n")
        paths.append(str(path))
    x = torch.tensor([1.0, -2.0])
    a, b = (Activation.from_string("twice(x)", p) for p in paths)
    assert a.program.source == b.program.source
    assert torch.equal(a.module()(x), 2 * x) and torch.equal(b.module()(x), 3 * x)
    assert torch.equal(a(x), 2 * x) and torch.equal(b(x), 3 * x)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


HEADER = "import torch\nfrom gp_activations import SearchSpace\nspace = SearchSpace('bad')\n"


@pytest.mark.parametrize("body, line, message", [
    ("space.use('add',\n", 4, "syntax error"),                     # never closed
    ("space.use('add')\nx = = 1\n", 5, "syntax error"),
    ("space.use('add')\n\nraise RuntimeError('boom')\n", 6, "RuntimeError: boom"),
    ("space.use('add', 'no_such_op')\n", 4, "unknown operator 'no_such_op'"),
    ("space.use('add')\n@space.unary\ndef activation(x):\n    return x\n", 5, "reserved"),
    ("space.use('add')\n@space.unary\ndef e2(x):\n    return x\n", 5, "reserved"),
    ("space.use('add')\n@space.unary\ndef add(x):\n    return x\n", 5, "defined twice"),
    ("space.use('add')\nspace.constants(big=float('inf'))\n", 5, "must be finite"),
    ("space.use('add')\nspace.constants('two')\n", 5, "unknown constant 'two'"),
    ("import no_such_module_abc\n", 4, "ModuleNotFoundError"),
])
def test_errors_in_a_primitives_file_name_file_and_line(tmp_path, body, line, message):
    path = _write(tmp_path, "bad_space.py", HEADER + body)
    with pytest.raises(UserError) as info:
        load_primitive_set(str(path))
    text = str(info.value)
    assert text.startswith(f"{path}:{line}:"), text
    assert message in text and "\n" not in text


@pytest.mark.parametrize("text, message", [
    ("import torch\nx = 1\n", "no SearchSpace"),
    (HEADER + "other = SearchSpace('two')\n", "2 SearchSpace objects"),
    (HEADER, "has no operators"),
])
def test_primitives_file_without_a_usable_space(tmp_path, text, message):
    path = _write(tmp_path, "odd_space.py", text)
    with pytest.raises(UserError) as info:
        load_primitive_set(str(path))
    assert str(path) in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ("/no/such/dir/space.py", "primitives file not found: /no/such/dir/space.py"),
    ("./missing_space.py", "primitives file not found"),
    ("no_such_space", "unknown search space 'no_such_space'"),
    ("", "empty name"),
    (42, "got int"),
])
def test_bad_primitives_spec(spec, message):
    with pytest.raises(UserError, match=message):
        load_primitive_set(spec)


def test_user_operator_without_exportable_source(tmp_path):
    path = _write(tmp_path, "lambda_space.py", HEADER + "space.unary(lambda x: x * 2, name='dbl')\n")
    act = Activation.from_string("dbl(x)", str(path))
    assert torch.equal(act(torch.tensor([1.5])), torch.tensor([3.0]))
    with pytest.raises(UserError, match="cannot export operator 'dbl'"):
        act.torch_source()


def test_builtin_spaces_and_describe():
    assert builtin_names() == ["minimal", "pangaea", "swish_search"]
    assert load_primitive_set("pangaea") is load_primitive_set(" pangaea ")
    rows = {r["name"]: r for r in describe(load_primitive_set("pangaea"))}
    assert rows["x"]["arity"] == 0 and rows["one"]["latex"] == "1"
    assert rows["sigmul"]["arity"] == 2 and rows["sigmul"]["latex"] == r"x_{2} \sigma\left(x_{1}\right)"
    assert rows["abs"]["latex"] == r"\left|{x}\right|"
    assert rows["erf"]["latex"] == r"\operatorname{erf}{\left(x \right)}"
    rows = {r["name"]: r for r in describe(load_primitive_set("swish_search"))}
    assert rows["scale"]["latex"] == r"\beta x"
    assert set(rows) == {"x", *load_primitive_set("swish_search").operators}
    assert ops.numeric_namespace()["sigmoid"](0.0) == 0.5
