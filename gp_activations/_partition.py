"""The partitioner of fused activations (see :mod:`gp_activations.fusion`, finding 2).

AOTAutograd's min-cut partitioner recomputes every pointwise op in the backward, which suits
memory-bound GPUs; on a CPU the transcendental ones (exp, log1p, tanh, ... -- SLEEF calls) are
compute-bound, and recomputing them doubled their cost.  Here they are marked must-save in CPU
graphs, and min-cut does the rest.  Imported only when a function is compiled.
"""

from __future__ import annotations

import torch
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._inductor.custom_graph_pass import CustomPartitionerFn
from torch.utils.checkpoint import CheckpointPolicy

TRANSCENDENTAL = ("exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "sin", "cos", "tan",
                  "tanh", "sinh", "cosh", "asin", "acos", "atan", "atan2", "asinh", "acosh",
                  "atanh", "sigmoid", "softplus", "erf", "erfc", "erfinv", "i0", "special_i0e",
                  "special_i1e", "sinc", "lgamma", "digamma")
_EXPENSIVE = {getattr(torch.ops.aten, n) for n in TRANSCENDENTAL if hasattr(torch.ops.aten, n)}


def on_cpu(gm) -> bool:
    return all(getattr(n.meta.get("val"), "device", torch.device("cpu")).type == "cpu"
               for n in gm.graph.nodes if n.op == "placeholder")


class SaveTranscendentals(CustomPartitionerFn):
    """min-cut partitioning, with transcendental results saved (not recomputed) on CPUs."""

    def __call__(self, gm, joint_inputs, **kwargs):
        if on_cpu(gm):
            for node in gm.graph.nodes:
                if (node.op == "call_function"
                        and getattr(node.target, "overloadpacket", None) in _EXPENSIVE):
                    node.meta["recompute"] = CheckpointPolicy.MUST_SAVE
        return min_cut_rematerialization_partition(gm, joint_inputs, **kwargs)

    def uuid(self):  # part of inductor's cache key
        return "gp-activations/save-transcendentals/1"
