"""A small search space for quick runs and tests: eight unary and four binary operators,
enough to express ReLU, leaky shapes, Swish-like gates and periodic bumps."""

from gp_activations import SearchSpace

space = SearchSpace("minimal", "a handful of operators for quick runs and tests")
space.constants("one")
space.use("neg", "abs", "square", "sin", "tanh", "sigmoid", "erf", "relu",
          "add", "sub", "mul", "max")
