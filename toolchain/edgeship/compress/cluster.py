"""Weight clustering (weight sharing): k-means on each layer's weights, so a layer holds at most 2^bits distinct values.

Core ML keeps such a layer as a look-up table (:func:`palettize_unique` turns the clustered weights into the
package's LUT as they are, no re-clustering); every other format stores the weights as floats, the same number of
bytes, but they compress far better: :func:`edgeship.sizes.download_size` measures what an app store download
or an APK asset pays (zip deflate, level 9).

    model, rows = cluster(model, bits=4)                                   # 16 values per layer
    model, rows = cluster(model, bits=4, example_args=spec.example_inputs())  # LayerNorm gains folded in first
    model, rows = cluster(model, bits=4, layers={"Conv2d": {"bits": 6}, "classifier": None})
    finetune(model, train, val, TrainConfig(epochs=3, lr=1e-4), rows=rows) # centroids stay shared
    distinct_values("dist/m/onnx/model.onnx")                              # read back: tensor -> distinct values

The k-means is 1-D Lloyd in PyTorch (float64), deterministic: the centroids start at the weights' quantiles (or
evenly spaced between min and max: ``init="linear"``), each weight goes to its nearest centroid, each centroid
moves to the mean of its weights, until nothing moves (at most ``iters`` rounds). ``group_size`` clusters each
group of that many output channels on its own (2^bits values per group, as Core ML's per-grouped-channel
palettization); the default clusters the whole tensor. Biases, norms and other 1-D parameters are not clustered.

Converters fold some ops into the weights after them, which would multiply the clustered values (each channel or
column by its own factor): a BatchNorm after a conv (:func:`fold_batchnorm`), and in LiteRT a LayerNorm's gain into
the Linears it feeds (:func:`fold_layernorm`, which needs the model's inputs: ``example_args``). Both are folded
before clustering, exactly, so the clustered values are the ones that ship.

Fine-tuning keeps the centroids shared by re-parametrizing each clustered weight as ``centroids[index]``
(:func:`shared_centroids`, torch.nn.utils.parametrize): the optimizer trains the centroids, each centroid's gradient
is the sum of its weights' gradients (as in Deep Compression, Han et al. 2016), and the assignment stays fixed, so
the weights hold exactly the same number of distinct values at every step, not only after a final re-snap.
``compress.train.fit`` has no per-step hook, so :func:`finetune` wraps it in that context; any training loop can do
the same (``with shared_centroids(model, rows): ...``).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import EdgeshipError

BITS = (1, 2, 3, 4, 5, 6, 7, 8)
INITS = ("quantile", "linear")
OPTIONS = ("bits", "group_size")
# Module type -> the weight parameters clustered (MultiheadAttention's in_proj_weight is a bare parameter).
WEIGHTS: dict[type, tuple[str, ...]] = {nn.Linear: ("weight",), nn.Conv1d: ("weight",), nn.Conv2d: ("weight",),
                                        nn.Conv3d: ("weight",), nn.ConvTranspose1d: ("weight",),
                                        nn.ConvTranspose2d: ("weight",), nn.Embedding: ("weight",),
                                        nn.MultiheadAttention: ("in_proj_weight",)}


@dataclass
class ClusterConfig:
    """The recipe's ``cluster:`` stage (compress/stages.py): :func:`cluster` to ``2**bits`` values per weight (per
    group of ``group_size`` output channels when given), then an optional fine-tune with the centroids shared.
    ``layers`` overrides per layer name or type ({bits, group_size}, a bare number of bits, or null)."""

    bits: int = 4
    group_size: int | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    finetune_epochs: int = 0             # 0: no fine-tune (and no data needed)
    lr: float = 1e-4
    batch_size: int = 64
    patience: int | None = 5

    def __post_init__(self):
        default = _check_cluster_opts("cluster", {"bits": self.bits, "group_size": self.group_size})
        for name, opts in self.layers.items():
            if opts is not None:
                _check_cluster_opts(f"cluster.layers.{name}", opts, default)
        if self.finetune_epochs < 0:
            raise EdgeshipError(f"cluster.finetune_epochs must be >= 0, got {self.finetune_epochs}")


# -- k-means -----------------------------------------------------------------------------------------------
def kmeans_1d(x: torch.Tensor, k: int, iters: int = 50, init: str = "quantile") -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means of the values of ``x``: ``(centroids (<= k, ascending, float64), index (x's shape, int64))``
    with ``centroids[index]`` the clustered ``x``. Deterministic (no random init). Values already on <= k distinct
    points are returned as they are."""
    if init not in INITS:
        raise EdgeshipError(f"unknown k-means init {init!r}", hint=f"one of {', '.join(INITS)}")
    flat = x.detach().reshape(-1).double()
    uniq, inverse = torch.unique(flat, return_inverse=True)
    if len(uniq) <= k:
        return uniq, inverse.reshape(x.shape)
    if init == "quantile":
        xs = torch.sort(flat).values
        c = xs[torch.linspace(0, len(xs) - 1, k, dtype=torch.float64).round().long()]
    else:
        c = torch.linspace(float(flat.min()), float(flat.max()), k, dtype=torch.float64)
    c = torch.unique(c)            # ties in the quantiles (many equal weights): fewer, distinct starting points
    for _ in range(iters):
        idx = _nearest(flat, c)
        sums = torch.zeros_like(c).scatter_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=len(c)).double()
        new = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        if torch.equal(new, c):
            break
        c = torch.sort(new).values
    c = c[torch.bincount(_nearest(flat, c), minlength=len(c)) > 0]   # drop centroids that lost all their weights
    return c, _nearest(flat, c).reshape(x.shape)


def _nearest(flat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the ascending centroids ``c`` for each value (ties to the lower one)."""
    if len(c) == 1:
        return torch.zeros(len(flat), dtype=torch.long)
    return torch.bucketize(flat, (c[1:] + c[:-1]) / 2, right=False)


def cluster_tensor(w: torch.Tensor, bits: int, group_size: int | None = None, iters: int = 50,
                   init: str = "quantile") -> torch.Tensor:
    """``w`` with each value replaced by its k-means centroid (2^bits per tensor, or per group of ``group_size``
    output channels along dim 0), in ``w``'s dtype."""
    k = 2 ** bits
    if group_size is None or group_size >= w.shape[0]:
        c, idx = kmeans_1d(w, k, iters, init)
        return c.to(w.dtype)[idx]
    out = torch.empty_like(w)
    for start in range(0, w.shape[0], group_size):
        part = w[start:start + group_size]
        c, idx = kmeans_1d(part, k, iters, init)
        out[start:start + group_size] = c.to(w.dtype)[idx]
    return out


# -- the stage ---------------------------------------------------------------------------------------------
def cluster(module: nn.Module, bits: int = 4, layers: dict[str, Any] | None = None, *, group_size: int | None = None,
            iters: int = 50, init: str = "quantile", example_args: tuple | None = None) -> tuple[nn.Module, list[dict]]:
    """k-means weight sharing on a copy of ``module`` (``module`` itself is untouched; its convolutions' BatchNorms
    folded in first: :func:`fold_batchnorm`; with ``example_args``, the model's inputs, also each LayerNorm's gain
    and bias into the Linears that alone read it: :func:`fold_layernorm`): each weight of every
    Linear, Conv, ConvTranspose, Embedding and MultiheadAttention (in_proj_weight) ends up with at most
    ``2**bits`` distinct values (per group of ``group_size`` output channels when given).

    ``layers`` overrides per layer name or type (class name): ``{"bits": 6, "group_size": 8}`` (either key), a
    bare number of bits, or ``None`` to leave the layer in float; layer name > layer type > global.

    Returns the new module and one row per candidate weight: ``name`` (the module), ``param``, ``shape``,
    ``bits``, ``group_size``, ``distinct_before``, ``distinct_after``, ``sqnr_db`` (the clustered weight against
    the original), ``clustered``, ``reason`` (why not, else None) and ``folded_norm`` (the LayerNorm whose gain
    this weight took, else None)."""
    from ..recipe import resolve_layers
    from ..verify import sqnr_db

    default = _check_cluster_opts("global", {"bits": bits, "group_size": group_size})
    out = fold_batchnorm(copy.deepcopy(module))
    folded: dict[str, str] = {}
    if example_args is not None:
        try:
            folded = {w: f["norm"] for f in fold_layernorm(out, example_args) for w in f["into"]}
        except Exception as e:  # noqa: BLE001 - no graph (torch.export refused the model): cluster without the fold
            warnings.warn(f"LayerNorm gains not folded before clustering (torch.export: {type(e).__name__}: "
                          f"{str(e)[:200]}); LiteRT may fold them into the clustered Linears")
    per_layer = resolve_layers(out, dict(layers or {}), default)
    rows: list[dict] = []
    for name, m in out.named_modules():
        params = _weight_names(m)
        if not name or not params:
            continue
        opts = per_layer.get(name)
        for pname in params:
            w = getattr(m, pname, None)
            if not isinstance(w, torch.Tensor) or not w.is_floating_point():
                continue
            before = int(torch.unique(w.detach()).numel())
            row = {"name": name, "param": pname, "shape": list(w.shape), "bits": None, "group_size": None,
                   "distinct_before": before, "distinct_after": before, "sqnr_db": None, "clustered": False,
                   "reason": None, "folded_norm": folded.get(f"{name}.{pname}")}
            rows.append(row)
            if opts is None:
                row["reason"] = "skipped (layers option None)"
                continue
            o = _check_cluster_opts(name, opts, default)
            row.update(bits=o["bits"], group_size=o["group_size"])
            if isinstance(m, (nn.MultiheadAttention,)) and getattr(m, "_qkv_same_embed_dim", True) is False:
                row["reason"] = "MultiheadAttention with separate q/k/v weights: not clustered"
                continue
            with torch.no_grad():
                new = cluster_tensor(w.detach(), o["bits"], o["group_size"], iters, init)
                ref = w.detach().double().numpy()
                w.copy_(new)
            row.update(distinct_after=int(torch.unique(w.detach()).numel()), clustered=True,
                       sqnr_db=round(sqnr_db(ref, w.detach().double().numpy()), 2))
    return out, rows


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm that follows a convolution in an ``nn.Sequential`` (or a Sequential ending in
    one, as a low-rank pair) into that convolution (the BatchNorm becomes Identity), in place; exact in eval. Converters fold it anyway (Core ML, LiteRT, XNNPACK), and
    a fold after clustering scales each output channel by its own factor, so a layer of 16 values would ship with up
    to 16 x channels; folded first, the clustered values are the ones that ship."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            holder, key = seq, a   # a convolution, or the pair a low-rank stage made of one (its last conv)
            while isinstance(holder._modules[key], nn.Sequential) and len(holder._modules[key]):
                holder, key = holder._modules[key], list(holder._modules[key]._modules)[-1]
            conv, bn = holder._modules[key], seq._modules[b]
            if isinstance(conv, convs) and isinstance(bn, bns) and bn.track_running_stats and not bn.training:
                holder._modules[key] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return module


# Ops a LayerNorm's output may pass on its way to the Linears its gain and bias are folded into: each moves values
# and never mixes or scales the last axis, the one the gain and bias run along (checked per node: _keeps_last_axis).
_aten = torch.ops.aten
_MOVES = frozenset({_aten.view.default, _aten.reshape.default, _aten._unsafe_view.default, _aten.unsqueeze.default,
                    _aten.squeeze.dim, _aten.squeeze.dims, _aten.flatten.using_ints, _aten.unflatten.int,
                    _aten.clone.default, _aten.contiguous.default, _aten.alias.default, _aten.transpose.int,
                    _aten.permute.default, _aten.dropout.default})


def fold_layernorm(module: nn.Module, example_args: tuple) -> list[dict]:
    """Fold the affine of each LayerNorm (gain gamma, bias beta) into the Linear layers that read its output, in
    place: ``W' = W diag(gamma)``, ``b' = b + W beta``; the LayerNorm keeps gain 1 and bias 0, frozen
    (``requires_grad`` False, so a fine-tune cannot grow a gain back). Exact in float, and done only where it is:
    every reader of the LayerNorm's output (through reshapes, transposes and eval dropout that leave its last axis
    in place) is a Linear on that axis whose weight nothing else reads, as :func:`compress.smooth.smooth_pairs`
    finds them on the ``torch.export`` graph (run on ``example_args``); a LayerNorm that also feeds a residual add,
    an activation, a pooling or anything else is left as it is.

    Why before clustering: LiteRT's converter folds the gain into those Linears itself (column j times gamma_j),
    so a Linear clustered to 16 values would ship with up to 16 x in_features. Folded first, the clustered values
    are the ones that ship. ``nn.MultiheadAttention`` self-attention is covered: ``torch.export`` emits its packed
    q/k/v projection as one linear on ``in_proj_weight`` / ``in_proj_bias``. A Linear without a bias takes
    ``W beta`` in the bias of the Linear right after it when that alone reads it (a low-rank pair), else gets a bias.

    Returns one dict per folded LayerNorm: ``norm`` (its module name) and ``into`` (the weights, "module.param")."""
    from .equalize import _shared
    from .quantize import export_graph
    from .smooth import LAYER_NORM, LINEAR, smooth_pairs

    gm = export_graph(module, tuple(example_args))
    done = []
    for ln, _, consumers in smooth_pairs(gm, through=_keeps_last_axis):
        if ln.target != LAYER_NORM:
            continue
        plan = _fold_plan(module, gm, ln, consumers, _shared, LINEAR)
        if plan is None:
            continue
        gain, beta, items = plan
        with torch.no_grad():
            g = gain.detach().double()
            b = beta.detach().double() if beta is not None else None
            for w, bias_at in items:
                W = w.detach().double()
                if b is not None and bool(b.any()):
                    shift = W @ b
                    for target, through in bias_at:
                        target.add_((through.detach().double() @ shift if through is not None else shift).to(target.dtype))
                w.copy_((W * g).to(w.dtype))
            gain.fill_(1.0)
            gain.requires_grad_(False)
            if beta is not None:
                beta.zero_()
                beta.requires_grad_(False)
        done.append({"norm": ln.args[2].target.rsplit(".", 1)[0], "into": [c.args[1].target for c in consumers]})
    return done


def _fold_plan(module: nn.Module, gm, ln, consumers, shared, linear_op):
    """(gain, bias or None, [(consumer weight, [(tensor that takes W beta, matrix it goes through or None)])]) for
    one LayerNorm -> Linears pair, all the original module's own parameters (by the graph's get_attr targets); None
    when some part is not a plain parameter (nothing is changed then)."""
    def param(node):
        if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
            return None
        try:
            return module.get_parameter(node.target)
        except AttributeError:
            return None

    gain = param(ln.args[2])
    beta_node = ln.args[3] if len(ln.args) > 3 else ln.kwargs.get("bias")
    beta = param(beta_node)
    if gain is None or (beta_node is not None and (beta is None or shared(gm, beta_node))):
        return None
    items = []
    for c in consumers:
        w = param(c.args[1])
        if w is None:
            return None
        b_node = c.args[2] if len(c.args) > 2 else c.kwargs.get("bias")
        bias_at = []
        if beta is None or not bool(beta.detach().any()):
            pass                                                    # nothing to move into a bias
        elif b_node is not None:
            b = param(b_node)
            if b is None or shared(gm, b_node):
                return None
            bias_at = [(b, None)]
        else:
            nxt = list(c.users)
            d = nxt[0] if len(nxt) == 1 else None
            d_bias = d.args[2] if d is not None and d.target == linear_op and d.args[0] is c and len(d.args) > 2 else None
            if d_bias is not None and param(d.args[1]) is not None and param(d_bias) is not None \
                    and not shared(gm, d.args[1]) and not shared(gm, d_bias):
                bias_at = [(param(d_bias), param(d.args[1]))]        # W_d (W_c beta) into the next Linear's bias
            else:
                owner_name, _, pname = c.args[1].target.rpartition(".")
                owner = module.get_submodule(owner_name)
                bname = {"weight": "bias", "in_proj_weight": "in_proj_bias"}.get(pname)
                if not isinstance(owner, (nn.Linear, nn.MultiheadAttention)) or bname is None \
                        or getattr(owner, bname, None) is not None:
                    return None
                new = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
                setattr(owner, bname, new)
                bias_at = [(new, None)]
        items.append((w, bias_at))
    return gain, beta, items


def _keeps_last_axis(node) -> bool:
    """Whether ``node`` (the one reader of a LayerNorm's output, or of an op after it) hands every value on at the
    same index of the last axis, unscaled: a reshape that keeps the last dimension's size (row-major, so the last
    index is kept), a transpose or permute that leaves the last axis last, a copy, dropout in eval."""
    if node.op != "call_function" or node.target not in _MOVES or not node.args:
        return False
    if node.target == _aten.dropout.default:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
        if train is not False:
            return False
    src = node.args[0]
    a = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
    b = node.meta.get("val")
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() == 0 or b.dim() == 0:
        return False
    if a.shape[-1] != b.shape[-1]:
        return False
    last = a.dim() - 1
    if node.target == _aten.transpose.int:
        d0, d1 = (int(d) % a.dim() for d in node.args[1:3])
        return d0 == d1 or last not in (d0, d1)
    if node.target == _aten.permute.default:
        return int(node.args[1][-1]) % a.dim() == last
    return True


def _weight_names(m: nn.Module) -> tuple[str, ...]:
    for t, names in WEIGHTS.items():
        if isinstance(m, t):
            return names
    return ()


def _check_cluster_opts(name: str, opts, base: dict | None = None) -> dict:
    """Options for one layer: a dict of ``bits`` / ``group_size`` (each inherited from ``base`` when absent) or
    a bare number of bits."""
    if not isinstance(opts, dict):
        opts = {"bits": opts}
    unknown = set(opts) - set(OPTIONS)
    if unknown:
        raise EdgeshipError(f"clustering options for {name!r}: unknown {', '.join(sorted(map(str, unknown)))}",
                            hint="per-layer options are {bits: 6}, {group_size: 8}, a number of bits, or null")
    o = {"bits": None, "group_size": None, **(base or {}), **opts}
    if o["bits"] not in BITS:
        raise EdgeshipError(f"clustering bits for {name!r} must be one of {BITS}, got {o['bits']!r}",
                            hint="4 bits: 16 values per layer; 6 bits: 64; 8 bits: 256")
    g = o["group_size"]
    if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
        raise EdgeshipError(f"group_size for {name!r} must be a positive number of output channels, got {g!r}")
    return o


# -- fine-tuning with shared centroids ---------------------------------------------------------------------
class SharedValues(nn.Module):
    """A parametrization ``centroids -> centroids[index]``: the weight's distinct values (per group of output
    channels) are the trained parameter, the assignment of each weight to one of them is a fixed buffer."""

    def __init__(self, weight: torch.Tensor, group_size: int | None = None):
        super().__init__()
        w = weight.detach()
        key = w.reshape(-1).double()
        if group_size is not None and group_size < w.shape[0]:
            group = (torch.arange(w.shape[0]) // group_size).repeat_interleave(w[0].numel()).double()
            _, inverse = torch.unique(torch.stack([group, key], 1), dim=0, return_inverse=True)
        else:
            _, inverse = torch.unique(key, return_inverse=True)
        self.register_buffer("index", inverse.reshape(w.shape))
        self.size = int(inverse.max()) + 1

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        return centroids[self.index]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The mean of the weights assigned to each centroid (exactly each value, for a clustered weight)."""
        sums = torch.zeros(self.size, dtype=torch.float64, device=weight.device)
        sums.scatter_add_(0, self.index.reshape(-1), weight.detach().reshape(-1).double())
        counts = torch.bincount(self.index.reshape(-1), minlength=self.size).double()
        return (sums / counts.clamp(min=1)).to(weight.dtype)


@contextlib.contextmanager
def shared_centroids(module: nn.Module, rows: Iterable[dict] | None = None, max_values: int = 256) -> Iterator[list[str]]:
    """Within the block, each clustered weight of ``module`` (in place) is ``centroids[index]`` with the centroids
    the trainable parameter (see :class:`SharedValues`); on exit the weights become plain parameters again, still
    with their shared values. ``rows``: :func:`cluster`'s rows (their clustered weights and group sizes); without
    them every candidate weight with at most ``max_values`` distinct values is tied. Yields ``"name.param"`` of
    the tied weights."""
    modules = dict(module.named_modules())
    if rows is not None:
        todo = [(r["name"], r["param"], r.get("group_size")) for r in rows if r.get("clustered")]
    else:
        todo = [(n, p, None) for n, m in modules.items() if n for p in _weight_names(m)
                if isinstance(getattr(m, p, None), torch.Tensor)
                and torch.unique(getattr(m, p).detach()).numel() <= max_values]
    done: list[tuple[nn.Module, str]] = []
    try:
        for name, pname, group_size in todo:
            m = modules[name]
            parametrize.register_parametrization(m, pname, SharedValues(getattr(m, pname), group_size), unsafe=True)
            done.append((m, pname))
        yield [f"{n}.{p}" for n, p, _ in todo]
    finally:
        for m, pname in done:
            parametrize.remove_parametrizations(m, pname, leave_parametrized=True)
            # the parameter object is kept (set_ to the weight), and with it the centroids' gradient: drop it, or
            # the next backward (or torch.export) fails on a gradient of the centroids' shape
            getattr(m, pname).grad = None


def finetune(module: nn.Module, train, val=None, config=None, *, rows: Iterable[dict] | None = None,
             step_loss=None, progress=None, checkpoint=None, stage: str = "cluster-finetune"):
    """Fine-tune a clustered ``module`` in place with the existing loop (``compress.train``) while its centroids
    stay shared (:func:`shared_centroids`). ``config``: a ``TrainConfig``; ``step_loss`` (``(model, x, y) -> (loss,
    outputs)``, e.g. distillation from the unclustered model) replaces cross-entropy. Returns the ``FitResult``."""
    from dataclasses import asdict

    from .train import TrainConfig, ce_loss, fit

    cfg = config or TrainConfig(epochs=3, lr=1e-4)
    with shared_centroids(module, rows):
        return fit(module, train, val, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                   patience=cfg.patience, weight_decay=cfg.weight_decay,
                   step_loss=step_loss or ce_loss(cfg.label_smoothing), stage=stage, progress=progress,
                   checkpoint=checkpoint, fingerprint={"config": asdict(cfg), "stage": stage})


# -- Core ML: the clustered values as the package's look-up table -------------------------------------------
def palettize_unique(mlmodel, weight_threshold: int = 64, skip_ops: Iterable[str] = ()):
    """Palettize a converted Core ML ML Program (``ct.models.MLModel``) of a clustered model with coremltools'
    ``OpPalettizerConfig(mode="unique")``: each weight's own distinct values become its look-up table (2^nbits
    entries, nbits the smallest of 1, 2, 4, 6, 8 that holds them) and each weight a packed index; no re-clustering,
    so the package computes with exactly the clustered weights (in the model's compute precision). A weight with
    more than 256 distinct values (not clustered) stays as it is; so do weights of at most ``weight_threshold``
    elements and the ops named in ``skip_ops``. Needs iOS 16 / macOS 13 (constexpr_lut_to_dense).

    Returns ``(mlmodel, notes, details)`` like ``export.coreml.compress_weights``; details give the number of
    palettized weights and each one's LUT entries."""
    from coremltools.optimize import coreml as cto

    op = cto.OpPalettizerConfig(mode="unique", granularity="per_tensor", weight_threshold=weight_threshold)
    model = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op,
                                                                   op_name_configs=dict.fromkeys(skip_ops)))
    luts = lut_sizes(model)
    notes = [f"palettized with the clustered weights' own values as look-up tables (coremltools mode 'unique'): "
             f"{len(luts)} weight tensors, {max(luts.values(), default=0)} LUT entries at most"]
    return model, notes, {"palettized_weights": len(luts), "lut_entries": luts}


def palettize_mlpackage(src: str | Path, dst: str | Path, weight_threshold: int = 64) -> Path:
    """:func:`palettize_unique` on a saved .mlpackage, written to ``dst`` (a new .mlpackage; ``src`` untouched)."""
    import coremltools as ct

    model, _, _ = palettize_unique(ct.models.MLModel(str(src), skip_model_load=True), weight_threshold)
    dst = Path(dst)
    model.save(str(dst))
    return dst


def lut_sizes(mlmodel) -> dict[str, int]:
    """LUT entries per palettized weight (constexpr_lut_to_dense op) of a Core ML model, read from its program."""
    out = {}
    for op in _mil_program(mlmodel).functions["main"].operations:
        if op.op_type == "constexpr_lut_to_dense":
            lut = op.inputs["lut"].val
            # iOS 16: lut is (2^nbits,) per tensor; iOS 18: (..., 2^nbits, vector_size) per group
            out[op.name] = int(lut.shape[0] if lut.ndim == 1 else lut.shape[-2])
    return out


def _mil_program(mlmodel):
    """The MIL program of an MLModel: the one it was converted from, else parsed from its spec and weights
    (a package loaded from disk, which needs no macOS)."""
    if getattr(mlmodel, "_mil_program", None) is not None:
        return mlmodel._mil_program
    from coremltools.converters.mil.frontend.milproto.load import load

    spec = mlmodel.get_spec()
    return load(spec, spec.specificationVersion, mlmodel.weights_dir)


# -- read back: the weights an exported file really holds ---------------------------------------------------
def distinct_values(path: str | Path, min_dims: int = 2) -> dict[str, int]:
    """Distinct values of each weight tensor (constant float or int8 tensor with at least ``min_dims`` dimensions
    longer than 1: biases, norms and per-channel PReLU slopes, however a converter reshapes them, are not weights
    here; nor is a ``1 x n`` Linear weight) stored in an exported artifact, read back from the file: ONNX initializers, TFLite buffers,
    ExecuTorch constants (XNNPACK delegate data and portable constants), Core ML consts and palettized weights
    (decompressed by the constexpr op's own ``materialized_val_inference``; at most its LUT entries).
    ``max(distinct_values(p).values())`` is the most distinct values any weight tensor of the file holds."""
    return {name: int(np.unique(a).size) for name, a in weight_tensors(path).items()
            if sum(d > 1 for d in a.shape) >= min_dims}


def weight_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The constant tensors of an exported artifact (float, int8/uint8), by name, read back from the file."""
    p = Path(path)
    readers = {".onnx": _onnx_tensors, ".tflite": _tflite_tensors, ".pte": _pte_tensors, ".mlpackage": _coreml_tensors,
               ".mlmodel": _coreml_tensors}
    if p.suffix not in readers:
        raise EdgeshipError(f"cannot read the weights of {p.name}", hint=f"known: {', '.join(readers)}")
    return {k: v for k, v in readers[p.suffix](p).items() if v.dtype.kind == "f" or v.dtype in (np.int8, np.uint8)}


def _onnx_tensors(p: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(p))
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t is not None and a.t.dims:
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _tflite_tensors(p: Path) -> dict[str, np.ndarray]:
    from ai_edge_litert import schema_py_generated as fb

    dtypes = {fb.TensorType.FLOAT32: np.float32, fb.TensorType.FLOAT16: np.float16, fb.TensorType.INT8: np.int8,
              fb.TensorType.UINT8: np.uint8, fb.TensorType.INT32: np.int32, fb.TensorType.INT16: np.int16,
              fb.TensorType.INT64: np.int64, fb.TensorType.FLOAT64: np.float64}
    buf = p.read_bytes()
    model = fb.Model.GetRootAsModel(buf, 0)
    out = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = model.Buffers(t.Buffer())
            if b is None or t.Type() not in dtypes:
                continue
            if b.DataLength():
                raw = b.DataAsNumpy().tobytes()
            elif b.Offset() > 1:         # large models keep buffers after the flatbuffer (offset from the file start)
                raw = buf[b.Offset(): b.Offset() + b.Size()]
            else:
                continue
            shape = tuple(t.ShapeAsNumpy()) if t.ShapeLength() else ()
            arr = np.frombuffer(raw, dtypes[t.Type()])
            name = (t.Name() or b"").decode(errors="replace") or f"tensor_{i}"
            out[f"{name}#{s}.{i}" if name in out else name] = arr.reshape(shape) if arr.size == math.prod(shape) else arr
    return out


_XNN_DTYPES = {"xnn_datatype_fp32": np.float32, "xnn_datatype_fp16": np.float16, "xnn_datatype_qint8": np.int8,
               "xnn_datatype_qcint8": np.int8, "xnn_datatype_quint8": np.uint8, "xnn_datatype_qint32": np.int32,
               "xnn_datatype_qcint32": np.int32, "xnn_datatype_bf16": None}


def _pte_tensors(p: Path) -> dict[str, np.ndarray]:
    """XNNPACK delegates' constant tensors (their dtype and shape from each delegate's XNNPACK graph, the bytes from
    the .pte's named data or the delegate's own constant segment) and the portable program's constants."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.scalar_type import ScalarType
    from executorch.exir.schema import Tensor

    pte = deserialize_pte_binary(p.read_bytes())
    program = pte.program
    named: dict[str, bytes] = {}
    if pte.named_data is not None:
        named = {k: bytes(pte.named_data.buffers[e.buffer_index]) for k, e in pte.named_data.pte_data.items()}
    out: dict[str, np.ndarray] = {}
    for plan in program.execution_plan:
        for d, delegate in enumerate(plan.delegates):
            if "xnnpack" not in delegate.id.lower() or delegate.processed.location != 0:   # 0: inline
                continue
            payload = bytes(program.backend_delegate_data[delegate.processed.index].data)
            for k, arr in _xnnpack_constants(payload, named).items():
                out[f"{plan.name}.delegate{d}.{k}"] = arr
        portable = {ScalarType.FLOAT: np.float32, ScalarType.HALF: np.float16, ScalarType.CHAR: np.int8,
                    ScalarType.BYTE: np.uint8, ScalarType.INT: np.int32, ScalarType.LONG: np.int64}
        for i, v in enumerate(plan.values):
            t = v.val
            if isinstance(t, Tensor) and t.data_buffer_idx > 0 and t.data_buffer_idx < len(program.constant_buffer) \
                    and t.scalar_type in portable:
                raw = bytes(program.constant_buffer[t.data_buffer_idx].storage)
                arr = np.frombuffer(raw, portable[t.scalar_type])
                n = math.prod(t.sizes)
                out[f"{plan.name}.value{i}"] = arr[:n].reshape(t.sizes) if arr.size >= n else arr
    return out


def _xnnpack_constants(payload: bytes, named: dict[str, bytes]) -> dict[str, np.ndarray]:
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader

    head = XNNHeader.from_bytes(payload[:XNNHeader.EXPECTED_LENGTH])
    graph = _xnnpack_json(payload[head.flatbuffer_offset: head.flatbuffer_offset + head.flatbuffer_size])
    consts = graph.get("constant_data", [])
    out = {}
    for v in graph.get("xvalues", []):
        t = v.get("xvalue_union", {})
        t = t.get("tensor_value", t)      # XNNQuantizedTensorValue wraps an XNNTensorValue
        idx = t.get("constant_buffer_idx", 0)
        dtype = _XNN_DTYPES.get(t.get("datatype"))
        if not idx or idx >= len(consts) or dtype is None:
            continue
        c = consts[idx]
        if c.get("named_key"):
            raw = named.get(c["named_key"])
        else:
            start = head.constant_data_offset + int(c.get("offset", 0))
            raw = payload[start: start + int(c.get("size", 0))]
        if not raw:
            continue
        arr = np.frombuffer(raw, dtype)
        dims = t.get("dims", [])
        n = math.prod(dims)
        out[f"xvalue{t.get('id_out', idx)}[{'x'.join(map(str, dims))}]"] = arr[:n].reshape(dims) if dims and arr.size >= n else arr
    return out


def _xnnpack_graph_schema() -> Path:
    import executorch.backends.xnnpack.serialization as ser

    return Path(ser.__path__[0]) / "schema.fbs"


def _xnnpack_json(flatbuffer: bytes) -> dict:
    """An XNNPACK delegate's graph (flatbuffer) as JSON, by ExecuTorch's bundled flatc and the schema it ships."""
    import re

    from executorch.exir._serialize._flatbuffer import _get_flatc_path

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "graph.bin")
        src.write_bytes(flatbuffer)
        subprocess.run([_get_flatc_path(), "--json", "--strict-json", "--raw-binary", "-o", tmp,
                        str(_xnnpack_graph_schema()), "--", str(src)], check=True, capture_output=True)
        text = Path(tmp, "graph.json").read_text()
    return json.loads(re.sub(r"(?<![\w\"])-?(nan|inf)\b", "0", text))   # clamp bounds: JSON has no inf/nan


def _coreml_tensors(p: Path) -> dict[str, np.ndarray]:
    import coremltools as ct

    program = _mil_program(ct.models.MLModel(str(p), skip_model_load=True))
    out = {}
    lut_parts = set()
    for op in program.functions["main"].operations:
        if op.op_type.startswith("constexpr_"):
            out[op.name] = np.asarray(op.materialized_val_inference())
            lut_parts |= {v.op.name for v in op.inputs.values() if v.op is not None}
    for op in program.functions["main"].operations:
        if op.op_type == "const" and op.name not in lut_parts and isinstance(op.outputs[0].val, np.ndarray):
            out[op.name] = op.outputs[0].val
    return out
