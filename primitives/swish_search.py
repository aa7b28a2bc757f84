"""The search space of Ramachandran, Zoph & Le (2017), "Searching for Activation Functions"
(the search that found Swish, x·σ(βx)).

Its core unit is b(u1(x), u2(x)); the β's of the parameterised operators (βx, x+β, β,
e^{-β(x1-x2)²}, e^{-β|x1-x2|}, βx1+(1-β)x2) are learnable scalars, trained with the network.
"""

from gp_activations import SearchSpace

space = SearchSpace("swish_search", "Ramachandran, Zoph & Le 2017: 25 unary and 10 binary operators")
space.use(
    # unary
    "identity", "neg", "abs", "square", "cube", "sqrt", "scale", "shift", "logabs", "exp",
    "sin", "cos", "sinh", "cosh", "tanh", "asinh", "atan", "sinc", "relu", "minzero",
    "sigmoid", "softplus", "gauss", "erf", "const",
    # binary
    "add", "mul", "sub", "div", "max", "min", "sigmul", "gaussdist", "laplacedist", "interp",
)
