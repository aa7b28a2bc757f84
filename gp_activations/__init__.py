"""gp-activations: discover activation functions with evolution (DEAP) and gradient descent.

The central object is :class:`Activation`, an expression tree over a DEAP primitive set with
optional learnable scalars, which compiles into a torch module and exports as LaTeX, sympy,
standalone torch code or JSON::

    from gp_activations import Activation
    act = Activation.from_string("mul(x, sigmoid(x))", primitives="pangaea")
    layer = act.module()          # a fresh nn.Module for one activation site
    print(act.latex())            # x \\sigma\\left(x\\right)
"""

__version__ = "0.1.0"

from .errors import ExpressionError, UserError  # noqa: E402
from .operators import Operator  # noqa: E402
from .primitive_sets import ActivationPrimitiveSet, SearchSpace, load_primitive_set  # noqa: E402
from .activation import Activation  # noqa: E402
from .replace import replace_activations  # noqa: E402
from . import zoo  # noqa: E402

__all__ = [
    "Activation",
    "ActivationPrimitiveSet",
    "ExpressionError",
    "Operator",
    "SearchSpace",
    "UserError",
    "load_primitive_set",
    "replace_activations",
    "zoo",
]
