"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"), exact in float: a remedy the int8
exporters try when their first recipes miss the SQNR target (compress.quantize.quantize_pt2e).

Per-channel int8 weights cope with channels of different ranges; per-tensor int8 activations do not. When a conv's
output channels span 0.05 to 1.2 (as a trained stem does), the small channels get a few int8 steps, and the
depthwise conv after it, whose weights are large exactly on those channels, multiplies their rounding noise. CLE
moves range between the two layers: output channel i of the first layer is divided by s_i and input channel i of
the second multiplied by s_i, with s_i = sqrt(r1_i / r2_i) (r: the channel's largest |weight|), so both end up
with range sqrt(r1_i r2_i). Between the two only ops that commute with a positive per-channel scale may sit
(ReLU, PReLU, max pooling, dropout in eval); ReLU6, hardswish and sigmoid do not, so pairs through them are left
alone. Nothing here changes the float function: the tests check cosine >= 0.99999 against the original.

:func:`equalize` works on the ``torch.export`` graph (what PT2E quantizes), in three exact steps:

1. batch norms are folded into the conv before them (torchao's ``_fuse_conv_bn_``, as ``prepare_pt2e`` does);
2. constant multiplies and adds right after a conv or linear (a per-channel or scalar affine, such as PP-LCNet's
   learnable affine blocks that onnx2torch leaves as Mul/Add) are folded into its weight and bias, so they are not
   requantized on their own;
3. each producer -> [ReLU | PReLU | max pool | dropout]* -> consumer(s) pair is equalized, a few sweeps over the
   network so chains settle.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

aten = torch.ops.aten
CONVS = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)
LINEAR = aten.linear.default
# Ops f with f(s * x) == s * f(x) for a positive per-channel s (channel axis 1); their output keeps the channels.
POOLS = frozenset({aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default})
HOMOGENEOUS = frozenset({aten.relu.default, aten.relu_.default, aten.prelu.default, aten.dropout.default,
                         aten.clone.default}) | POOLS
SWEEPS = 4
SCALE_LIMIT = 1e4       # per-channel scales are clamped to [1/limit, limit]


@dataclass
class EqualizeReport:
    batch_norms_folded: int = 0
    affine_folded: int = 0
    pairs: int = 0

    def note(self) -> str:
        return (f"cross-layer equalization: {self.pairs} layer pairs equalized, {self.affine_folded} constant "
                f"multiplies/adds and {self.batch_norms_folded} batch norms folded into the layers before them "
                "(exact in float)")


def equalize(module: torch.nn.Module, example_args: tuple) -> tuple[torch.fx.GraphModule, EqualizeReport]:
    """A ``torch.export`` graph of a copy of ``module`` (eval mode) with batch norms and constant affines folded
    and layer pairs equalized; the float function is unchanged. ``module`` itself is not touched."""
    from .quantize import export_graph
    return equalize_graph(export_graph(module, example_args))


def equalize_graph(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, EqualizeReport]:
    """:func:`equalize` on an exported graph module, in place (also returned)."""
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    report = EqualizeReport()
    before = _count(gm, "batch_norm")
    _fuse_conv_bn_(gm)
    report.batch_norms_folded = before - _count(gm, "batch_norm")
    report.affine_folded = _fold_affine(gm)
    pairs = _pairs(gm)
    for _ in range(SWEEPS):
        for producer, consumers in pairs:
            _equalize_pair(gm, producer, consumers)
    report.pairs = len(pairs)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, report


def _count(gm, word: str) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and word in str(n.target))


def _attr(gm, node) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node reads (None for anything else)."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    t = gm
    for part in node.target.split("."):
        t = getattr(t, part, None)
        if t is None:
            return None
    return t if isinstance(t, torch.Tensor) else None


def _weight_bias(gm, node):
    w = _attr(gm, node.args[1])
    b = _attr(gm, node.args[2]) if len(node.args) > 2 else _attr(gm, node.kwargs.get("bias"))
    return w, b


def _groups(node) -> int:
    return int(node.args[6]) if node.target in CONVS and len(node.args) > 6 else int(node.kwargs.get("groups", 1))


def _is_layer(gm, node) -> bool:
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or node.target not in (*CONVS, LINEAR):
        return False
    w, _ = _weight_bias(gm, node)
    return w is not None and not _shared(gm, node.args[1])


def _shared(gm, weight_node) -> bool:
    """A weight read by more than one op (tied weights) cannot be rescaled for one of them."""
    return len(weight_node.users) > 1


def _per_out_channel(k: torch.Tensor, channels: int, rank: int, linear: bool) -> torch.Tensor | None:
    """``k`` as a vector over a layer's output channels when it broadcasts that way (a scalar, or [C] at the
    channel axis: [1, C, 1, 1] for a conv, [..., C] for a linear), else None."""
    if k.numel() == 1:
        return k.reshape(1).expand(channels).clone()
    if k.numel() != channels:
        return None
    axis = rank - 1 if linear else 1
    shape = list(k.shape)
    shape = [1] * (rank - len(shape)) + shape
    if len(shape) != rank or shape[axis] != channels:
        return None
    return k.reshape(channels).clone()


def _fold_affine(gm) -> int:
    """Fold ``layer -> mul(const) / add(const)`` into the layer's weight and bias (a bias is created when missing
    only if the layer has one to change: layers without a bias keep constant adds)."""
    folded, changed = 0, True
    while changed:
        changed = False
        for node in list(gm.graph.nodes):
            if not _is_layer(gm, node) or len(node.users) != 1:
                continue
            user = next(iter(node.users))
            if user.target not in (aten.mul.Tensor, aten.add.Tensor) or len(user.args) != 2 or user.kwargs:
                continue
            other = user.args[1] if user.args[0] is node else user.args[0]
            if other is node:
                continue
            k = _attr(gm, other) if isinstance(other, torch.fx.Node) else (
                torch.tensor(float(other)) if isinstance(other, (int, float)) else None)
            w, b = _weight_bias(gm, node)
            if k is None:
                continue
            probe = node.meta.get("val")
            rank = probe.dim() if isinstance(probe, torch.Tensor) else (2 if node.target == LINEAR else w.dim())
            vec = _per_out_channel(k.detach().to(w.dtype), w.shape[0], rank, node.target == LINEAR)
            if vec is None or (user.target == aten.add.Tensor and b is None) or not torch.isfinite(vec).all():
                continue
            with torch.no_grad():
                if user.target == aten.mul.Tensor:
                    w.mul_(vec.view(-1, *([1] * (w.dim() - 1))))
                    if b is not None:
                        b.mul_(vec)
                else:
                    b.add_(vec)
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
            folded += 1
            changed = True
    return folded


def _in_channel_axis(gm, node, channels: int) -> int | None:
    """The weight axis of a consumer's input channels, or None when it cannot take a per-input-channel scale."""
    w, _ = _weight_bias(gm, node)
    if node.target == LINEAR:
        return 1 if w.dim() == 2 and w.shape[1] == channels else None
    g = _groups(node)
    if g == 1 and w.shape[1] == channels:
        return 1
    if g == channels and w.shape[0] == channels and w.shape[1] == 1:   # depthwise: one filter per channel
        return 0
    return None


def _pairs(gm) -> list[tuple[torch.fx.Node, list[torch.fx.Node]]]:
    out = []
    for node in gm.graph.nodes:
        if not _is_layer(gm, node):
            continue
        w, _ = _weight_bias(gm, node)
        if node.target in CONVS and _groups(node) not in (1, w.shape[0]):
            continue
        channels, cur = w.shape[0], node
        # after a linear only elementwise ops pass: a max pool would pool over its features
        through = HOMOGENEOUS - POOLS if node.target == LINEAR else HOMOGENEOUS
        while len(cur.users) == 1 and next(iter(cur.users)).target in through:
            nxt = next(iter(cur.users))
            if nxt.args[0] is not cur:
                break
            if nxt.target == aten.prelu.default and _attr(gm, nxt.args[1]) is None:
                break
            cur = nxt
        consumers = list(cur.users)
        if not consumers or not all(_is_layer(gm, c) and c.args[0] is cur
                                    and _in_channel_axis(gm, c, channels) is not None for c in consumers):
            continue
        if node.target == LINEAR and any(c.target != LINEAR for c in consumers):
            continue
        out.append((node, consumers))
    return out


def _equalize_pair(gm, producer, consumers) -> None:
    w1, b1 = _weight_bias(gm, producer)
    r1 = w1.detach().flatten(1).abs().amax(1).double()
    r2 = torch.zeros_like(r1)
    for c in consumers:
        w2, _ = _weight_bias(gm, c)
        axis = _in_channel_axis(gm, c, w1.shape[0])
        r2 = torch.maximum(r2, w2.detach().transpose(0, axis).flatten(1).abs().amax(1).double())
    s = torch.sqrt(r1 / r2)
    s = torch.where((r1 > 0) & (r2 > 0) & torch.isfinite(s), s, torch.ones_like(s))
    s = s.clamp(1 / SCALE_LIMIT, SCALE_LIMIT).to(w1.dtype)
    with torch.no_grad():
        w1.div_(s.view(-1, *([1] * (w1.dim() - 1))))
        if b1 is not None:
            b1.div_(s)
        for c in consumers:
            w2, _ = _weight_bias(gm, c)
            axis = _in_channel_axis(gm, c, w1.shape[0])
            shape = [1] * w2.dim()
            shape[axis] = -1
            w2.mul_(s.view(shape))


def equalized_copy(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, EqualizeReport]:
    """:func:`equalize_graph` on a deep copy of ``gm``."""
    return equalize_graph(copy.deepcopy(gm))
