"""The ``gp-activations`` command line.

Every sub-command turns bad input into one line on stderr and exit status 2 (no traceback):
library code raises :class:`~gp_activations.errors.UserError`, and argparse's own errors are
reduced to a single line as well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError

PROG = "gp-activations"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) rather than usage + error."""

    def error(self, message):
        # main() prefixes "gp-activations: error:"; a sub-command's parser names itself too
        where = "" if self.prog == PROG else f"{self.prog}: "
        raise UserError(f"{where}{message} (see {self.prog} --help)")


def _write_output(text: str, out) -> None:
    if out:
        path = Path(out)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text if text.endswith("\n") else text + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror}") from None
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


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
        for name in builtin_names():
            pset = load_primitive_set(name)
            print(f"  {name:14s} {len(pset.unary):2d} unary, {len(pset.binary):2d} binary  "
                  f"{pset.description}")
        return 0
    pset = load_primitive_set(args.space)
    print(f"{pset.name}: {pset.description}".rstrip(": "))
    print(f"{'name':12s} {'arity':>5s}  {'LaTeX':40s} description")
    for row in describe(pset):
        print(f"{row['name']:12s} {row['arity']:5d}  {row['latex']:40s} {row['doc']}")
    return 0


def cmd_zoo(args) -> int:
    from . import zoo

    names = [args.name] if args.name else zoo.names()
    for name in names:
        act = zoo.get(name)
        print(f"{name:11s} {act.latex()}")
        print(f"{'':11s} {act}")
    if args.torch or args.name:
        sample = args.name or "mish"
        print(f"\n# Standalone torch export of {sample!r} "
              f"(gp-activations export --expr '{zoo.get(sample).expression}' --format torch):\n")
        print(zoo.get(sample).torch_source(class_name=sample.title().replace("_", "")))
    return 0


def _activation_from_args(args):
    from . import zoo
    from .activation import Activation

    if args.expr is None:
        raise UserError("export: give --expr EXPR (an expression or zoo name) or a RUN directory")
    text = args.expr
    if text in zoo.names() and args.primitives == "pangaea" and not args.params:
        return zoo.get(text)
    return Activation.from_string(text, args.primitives, _parse_int_list(args.params, "--params"))


def render(act, fmt: str, values=None) -> str:
    if fmt == "latex":
        return act.latex(values=values if isinstance(values, dict) else None)
    if fmt == "sympy":
        return str(act.sympy(values=values if isinstance(values, dict) else None))
    if fmt == "torch":
        return act.torch_source(values=values)
    if fmt == "json":
        return act.to_json()
    raise UserError(f"unknown format {fmt!r}; choose latex, sympy, torch or json")


def cmd_export(args) -> int:
    if args.run:
        from .report import export_from_run  # a search run's winner

        text = export_from_run(args.run, rank=args.rank, fmt=args.format,
                               with_learned=args.with_learned_params)
    else:
        text = render(_activation_from_args(args), args.format)
    _write_output(text, args.out)
    return 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Discover activation functions with evolution "
                     "(DEAP) and gradient descent (PyTorch), after PANGAEA.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("primitives", help="list the built-in search spaces or one set's operators")
    p.add_argument("space", nargs="?", help="built-in name, path to a .py file, or module:attr")
    p.set_defaults(func=cmd_primitives)

    p = sub.add_parser("zoo", help="show the known activation functions as trees, LaTeX and torch code")
    p.add_argument("name", nargs="?", help="one zoo entry (default: all)")
    p.add_argument("--torch", action="store_true", help="also print a sample torch export")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("export", help="export an activation as LaTeX, sympy, torch code or JSON")
    p.add_argument("run", nargs="?", help="a search run directory (exports its winner)")
    p.add_argument("--expr", help="an expression in prefix notation, e.g. 'mul(x, sigmoid(x))', "
                   "or a zoo name")
    p.add_argument("--primitives", default="pangaea", help="search space of --expr (default pangaea)")
    p.add_argument("--params", default="", help="nodes carrying learnable scalars, e.g. 0,3")
    p.add_argument("--format", default="latex", choices=["latex", "sympy", "torch", "json"])
    p.add_argument("--rank", type=int, default=1, help="with RUN: which function (1 = best)")
    p.add_argument("--with-learned-params", action="store_true",
                   help="with RUN and --format torch: bake in the learned scalars per site")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_export)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


#: Later modules (train, search, evaluate, report) add their sub-commands here.
_EXTRA_COMMANDS: list = []


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gp-activations zoo | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
