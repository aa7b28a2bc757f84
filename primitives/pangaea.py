"""PANGAEA's search space (Bingham & Miikkulainen, "Discovering Parametric Activation
Functions", Neural Networks 2022): a broad set of unary and binary operators from which
evolution composes activation functions such as ``sigmul(x, erf(x))``.
"""

from gp_activations import SearchSpace

space = SearchSpace("pangaea", "PANGAEA: 24 unary and 7 binary operators (Bingham & Miikkulainen 2022)")
space.constants("zero", "one")
space.use(
    # unary
    "neg", "abs", "square", "cube", "sqrt", "exp", "gauss", "softplus", "logabs",
    "sin", "cos", "sinh", "cosh", "tanh", "asinh", "atan", "sinc", "relu", "minzero",
    "sigmoid", "erf", "erfc", "i0e", "i1e",
    # binary
    "add", "sub", "mul", "div", "max", "min", "sigmul",
)
