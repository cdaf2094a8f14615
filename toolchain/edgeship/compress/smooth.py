"""SmoothQuant-style migration of activation outliers into weights (Xiao et al. 2023), exact in float: a remedy
the int8 exporters try when their first recipes miss the SQNR target (compress.quantize.quantize_pt2e).

Trained transformers carry a few input features of their linear layers at 10-100x the others' range (a LayerNorm
gain that grew large on a few channels). Per-tensor int8 activations then spend their 256 steps on those few
features and round the rest to a handful of steps; per-output-channel int8 weights cannot help, since the outlier
is on the *input* axis. SmoothQuant divides input feature j of the activation by s_j and multiplies column j of the
linear's weight by s_j, with s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha): the activation range flattens, the
weights (quantized per output channel, with 256 steps each) take the difference. The division is folded into the
op that makes the activation, so nothing is added to the graph:

- a LayerNorm with a gain (and bias): both divided by s;
- a linear layer (output feature j of its weight and bias divided by s_j), through ops that commute with a positive
  per-feature scale (ReLU, dropout in eval).

A pair is smoothed only when every reader of the activation is a linear layer on its last axis. The activation
ranges come from running the graph on calibration samples. Nothing here changes the float function: the tests
check cosine >= 0.99999 against the original.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch

from .equalize import LINEAR, _attr, _is_layer, _shared, _weight_bias

aten = torch.ops.aten
LAYER_NORM = aten.layer_norm.default
THROUGH = frozenset({aten.relu.default, aten.relu_.default, aten.dropout.default, aten.clone.default})
ALPHA = 0.5            # migration strength: 0.5 splits the range evenly between activation and weight (the paper's default)
SCALE_LIMIT = 1e4      # per-feature scales are clamped to [1/limit, limit]


@dataclass
class SmoothReport:
    pairs: int = 0
    largest_ratio: float = 1.0   # the widest activation range over its median feature's, before smoothing

    def note(self) -> str:
        return (f"SmoothQuant migration (alpha {ALPHA:g}): {self.pairs} activation{'s' if self.pairs != 1 else ''} "
                f"feeding linear layers smoothed (widest feature {self.largest_ratio:.0f}x the median before), "
                "the scales folded into the layer norms / linear layers before them (exact in float)")


def smooth_pairs(gm: torch.fx.GraphModule, through=None) -> list[tuple[torch.fx.Node, torch.fx.Node, list[torch.fx.Node]]]:
    """(producer, activation, linear consumers): a LayerNorm with a gain, or a linear layer, whose output (through
    ReLU/dropout) is read only by linear layers. ``through``: a predicate on a node, the single-reader ops the walk
    from the producer may pass instead (compress.cluster's LayerNorm fold passes layout ops, not ReLU)."""
    passes = through or (lambda n: n.target in THROUGH)
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == LAYER_NORM:
            if len(node.args) < 3 or _attr(gm, node.args[2]) is None or len(node.args[1]) != 1 or _shared(gm, node.args[2]):
                continue
            features = _attr(gm, node.args[2]).shape[0]
        elif node.target == LINEAR and _is_layer(gm, node):
            features = _weight_bias(gm, node)[0].shape[0]
        else:
            continue
        cur = node
        while len(cur.users) == 1 and passes(next(iter(cur.users))) and next(iter(cur.users)).args[0] is cur:
            cur = next(iter(cur.users))
        consumers = list(cur.users)
        if consumers and all(c.target == LINEAR and _is_layer(gm, c) and c.args[0] is cur
                             and _weight_bias(gm, c)[0].shape[1] == features for c in consumers):
            out.append((node, cur, consumers))
    return out


def smooth_graph(gm: torch.fx.GraphModule, samples: Sequence[tuple]) -> tuple[torch.fx.GraphModule, SmoothReport]:
    """SmoothQuant on a copy of the exported graph ``gm``, with activation ranges measured on ``samples``."""
    gm = copy.deepcopy(gm)
    pairs = smooth_pairs(gm)
    report = SmoothReport()
    if not pairs:
        return gm, report
    ranges = _feature_ranges(gm, {a.name for _, a, _ in pairs}, samples)
    for producer, act, consumers in pairs:
        x = ranges.get(act.name)
        if x is None:
            continue
        w = torch.stack([_weight_bias(gm, c)[0].detach().abs().amax(0) for c in consumers]).amax(0).double()
        s = x.pow(ALPHA) / w.pow(1 - ALPHA)
        s = torch.where((x > 0) & (w > 0) & torch.isfinite(s), s, torch.ones_like(s)).clamp(1 / SCALE_LIMIT, SCALE_LIMIT)
        report.largest_ratio = max(report.largest_ratio, float(x.max() / x.median().clamp_min(1e-30)))
        with torch.no_grad():
            if producer.target == LAYER_NORM:
                gain, bias = _attr(gm, producer.args[2]), _attr(gm, producer.args[3]) if len(producer.args) > 3 else None
                gain.div_(s.to(gain.dtype))
                if bias is not None:
                    bias.div_(s.to(bias.dtype))
            else:
                w1, b1 = _weight_bias(gm, producer)
                w1.div_(s.to(w1.dtype).view(-1, 1))
                if b1 is not None:
                    b1.div_(s.to(b1.dtype))
            for c in consumers:
                w2 = _weight_bias(gm, c)[0]
                w2.mul_(s.to(w2.dtype).view(1, -1))
        report.pairs += 1
    gm.recompile()
    return gm, report


def _feature_ranges(gm: torch.fx.GraphModule, names: set[str], samples: Sequence[tuple]) -> dict[str, torch.Tensor]:
    """Largest |value| of each last-axis feature of the named activations over ``samples``."""
    from torch.fx import Interpreter

    out: dict[str, torch.Tensor] = {}

    class Run(Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if n.name in names and isinstance(r, torch.Tensor):
                m = r.detach().abs().reshape(-1, r.shape[-1]).amax(0).double()
                out[n.name] = torch.maximum(out[n.name], m) if n.name in out else m
            return r

    with torch.no_grad():
        for s in samples:
            Run(gm).run(*s)
    return out
