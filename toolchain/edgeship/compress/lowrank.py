"""Low-rank factorization: truncated SVD of Linear and convolution weights (one big matrix becomes two thin ones).

A Linear ``m x n`` (out x in) of rank ``r`` becomes ``Linear(n, r, bias=False)`` then ``Linear(r, m)`` (with the
bias); a convolution ``out x in x k x k`` becomes a ``k x k`` convolution to ``r`` channels (the original stride,
padding and dilation, no bias) then a ``1 x 1`` convolution to ``out`` with the bias (a pointwise ``1 x 1``
convolution becomes two ``1 x 1`` ones). The weight, reshaped to ``out x (in*k*k)``, is split as
``(U sqrt(S)) (sqrt(S) V^T)``: both factors carry the same scale, which suits fine-tuning and int8 alike.

Both factors run at the original output resolution, so parameters and MACs shrink by the same factor
``r (m + n) / (m n)``; a layer is factorized only when that is < 1. Grouped (depthwise) convolutions are left
alone, as are the Linears that :class:`torch.nn.MultiheadAttention` reads as bare weights (``out_proj``).

The result is a plain dense ``nn.Module``: each factorized layer is replaced, under its own name, by an
``nn.Sequential`` of the two layers (``fc`` -> ``fc.0``, ``fc.1``), so every exporter takes it as it is.

    model, rows = factorize(model, energy=0.9)                       # keep 90% of each layer's energy
    model, rows = factorize(model, rank_ratio=0.25, layers={"classifier": None, "Linear": {"energy": 0.95}})

Per-layer options (layer name > layer type > global, ``None`` skips) go through :func:`edgeship.recipe.resolve_layers`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import EdgeshipError

CRITERIA = ("energy", "rank_ratio", "rank")
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
# Parents that read a child Linear's .weight themselves instead of calling it.
_WEIGHT_READERS = (nn.MultiheadAttention,)
# Parents whose inference fast path reads linear1/linear2.weight unless a hook is attached (see _keep_slow_path).
_FAST_PATH = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@dataclass
class LowRankConfig:
    """The recipe's ``lowrank:`` stage (compress/stages.py): :func:`factorize`, then an optional fine-tune (with
    distillation from the unfactorized model when ``distill`` is set). ``energy`` is the default when neither
    global option is given; ``layers`` overrides per layer name or type ({energy|rank_ratio|rank: x} or null)."""

    energy: float | None = None          # keep this fraction of each layer's squared singular values (default 0.9)
    rank_ratio: float | None = None      # or this fraction of each layer's full rank
    layers: dict[str, Any] = field(default_factory=dict)
    finetune_epochs: int = 0             # 0: no fine-tune (and no data needed)
    lr: float = 5e-4
    batch_size: int = 64
    patience: int | None = 5
    distill: bool = False                # fine-tune against the unfactorized model's outputs (soft targets)
    temperature: float = 4.0             # ... with these distillation settings
    alpha: float = 0.5

    def __post_init__(self):
        if self.energy is not None and self.rank_ratio is not None:
            raise EdgeshipError("lowrank: give energy or rank_ratio, not both",
                                hint="energy: 0.9 keeps 90% of each layer's energy; rank_ratio: 0.25 a quarter of its rank")
        if self.energy is None and self.rank_ratio is None and not self.layers:
            self.energy = 0.9
        for what, v in (("energy", self.energy), ("rank_ratio", self.rank_ratio)):
            if v is not None:
                _check_fraction(f"lowrank.{what}", v)
        for name, opts in self.layers.items():
            if opts is not None:
                _check_opts(f"lowrank.layers.{name}", opts)
        if self.finetune_epochs < 0:
            raise EdgeshipError(f"lowrank.finetune_epochs must be >= 0, got {self.finetune_epochs}")


def singular_values(layer: nn.Module) -> torch.Tensor:
    """The singular values (descending, float64) of a Linear/conv weight reshaped to ``out x (in*k*k)``."""
    return torch.linalg.svdvals(_matrix(layer))


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values carry at least ``energy`` of the sum of squared singular values."""
    _check_fraction("energy", energy)
    e = s.double() ** 2
    total = float(e.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(e, 0) / total
    return int(min(len(s), int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1))


def choose_rank(s: torch.Tensor, opts: dict) -> int:
    """The rank a layer with singular values ``s`` gets under ``opts`` (one of energy / rank_ratio / rank)."""
    full = len(s)
    if opts.get("energy") is not None:
        return rank_for_energy(s, float(opts["energy"]))
    if opts.get("rank_ratio") is not None:
        ratio = float(opts["rank_ratio"])
        _check_fraction("rank_ratio", ratio)
        return max(1, min(full, math.ceil(ratio * full - 1e-9)))
    r = int(opts["rank"])
    if r < 1:
        raise EdgeshipError(f"rank must be >= 1, got {r}")
    return min(full, r)


def split(layer: nn.Module, rank: int) -> nn.Sequential:
    """``layer`` (Linear, Conv1d or Conv2d, groups 1) as two layers through ``rank`` channels: the truncated SVD.
    At full rank the pair computes the same function (up to float rounding)."""
    w = _matrix(layer)
    m, n = w.shape
    if not 1 <= rank <= min(m, n):
        raise EdgeshipError(f"rank {rank} is outside 1..{min(m, n)} for a {m}x{n} weight")
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank])             # r x n
    second = u[:, :rank] * root[None, :]            # m x r
    dtype, device = layer.weight.dtype, layer.weight.device
    kw = {"dtype": dtype, "device": device}
    if isinstance(layer, nn.Linear):
        a = nn.Linear(layer.in_features, rank, bias=False, **kw)
        b = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, **kw)
        a.weight.data.copy_(first.to(dtype))
        b.weight.data.copy_(second.to(dtype))
    else:
        conv = type(layer)
        a = conv(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation, groups=1,
                 bias=False, padding_mode=layer.padding_mode, **kw)
        b = conv(rank, layer.out_channels, 1, bias=layer.bias is not None, **kw)
        a.weight.data.copy_(first.reshape(a.weight.shape).to(dtype))
        b.weight.data.copy_(second.reshape(b.weight.shape).to(dtype))
    if layer.bias is not None:
        b.bias.data.copy_(layer.bias.detach())
    out = nn.Sequential(a, b)
    out.train(layer.training)
    return out


def factorize(module: nn.Module, energy: float | None = None, rank_ratio: float | None = None,
              layers: dict[str, Any] | None = None) -> tuple[nn.Module, list[dict]]:
    """Truncated SVD of every Linear / Conv1d / Conv2d of a copy of ``module`` (``module`` itself is untouched).

    The rank of each layer: the smallest that keeps ``energy`` of the sum of its squared singular values, or
    ``rank_ratio`` of its full rank ``min(out, in*k*k)`` (rounded up). ``layers`` overrides per layer name or type
    (class name): a dict with one of ``energy`` / ``rank_ratio`` / ``rank`` (an explicit rank), or ``None`` to
    leave the layer as it is; layer name > layer type > the global option. With neither global option given,
    only the layers ``layers`` names are factorized.

    Returns the new module and one row per candidate layer: ``name, type, shape, full_rank, rank, energy_kept,
    params_before, params_after, factorized, reason`` (why it was not factorized, else None). Parameters and MACs
    of a layer shrink by the same factor (``params_after / params_before``).
    """
    from ..recipe import resolve_layers

    if energy is not None and rank_ratio is not None:
        raise EdgeshipError("give either energy or rank_ratio for low-rank factorization, not both")
    default = {"energy": energy} if energy is not None else {"rank_ratio": rank_ratio} if rank_ratio is not None else None
    if default is not None:
        _check_opts("global", default)
    out = copy.deepcopy(module)
    per_layer = resolve_layers(out, dict(layers or {}), default)
    modules = dict(out.named_modules())
    rows: list[dict] = []
    for name, layer in list(modules.items()):
        if not name or not isinstance(layer, LAYER_TYPES):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        opts = per_layer.get(name)
        w = layer.weight
        shape = tuple(w.shape)
        before = _params(layer)
        row = {"name": name, "type": type(layer).__name__, "shape": list(shape),
               "full_rank": min(shape[0], math.prod(shape[1:])), "rank": None, "energy_kept": None,
               "params_before": before, "params_after": before, "factorized": False, "reason": None}
        rows.append(row)
        if opts is None:
            row["reason"] = "skipped (layers option None)" if default is not None or name in (layers or {}) \
                or type(layer).__name__ in (layers or {}) else "no option for this layer"
            continue
        _check_opts(name, opts)
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.groups != 1:
            row["reason"] = f"grouped convolution (groups={layer.groups}): left as is"
            continue
        if isinstance(parent, _WEIGHT_READERS):
            row["reason"] = f"{type(parent).__name__} reads its .weight directly"
            continue
        s = singular_values(layer)
        r = choose_rank(s, opts)
        m, n = shape[0], math.prod(shape[1:])
        row["rank"] = r
        row["energy_kept"] = float((s[:r] ** 2).sum() / (s ** 2).sum()) if float((s ** 2).sum()) > 0 else 1.0
        if r * (m + n) >= m * n:
            row["reason"] = f"rank {r} saves nothing: {r}x({m}+{n}) >= {m}x{n}"
            continue
        new = split(layer, r)
        if isinstance(parent, _FAST_PATH):
            new.register_forward_hook(_keep_slow_path)
        setattr(parent, child, new)
        row.update(params_after=_params(new), factorized=True)
    for mod in out.modules():   # the encoder's nested-tensor fast path reads layers[0].linear1.weight too
        if isinstance(mod, nn.TransformerEncoder) and any(
                not isinstance(getattr(lay, k, None), nn.Linear) for lay in mod.layers for k in ("linear1", "linear2")):
            mod.use_nested_tensor = False
    return out, rows


def summary(rows: list[dict]) -> dict:
    """Totals over :func:`factorize`'s rows: layers factorized, parameters of the candidate layers before/after."""
    before = sum(r["params_before"] for r in rows)
    after = sum(r["params_after"] for r in rows)
    return {"layers": len(rows), "factorized": sum(r["factorized"] for r in rows),
            "params_before": before, "params_after": after, "ratio": after / before if before else 1.0}


def _keep_slow_path(module, args, output):
    """A no-op forward hook. nn.TransformerEncoderLayer's inference fast path reads ``linear1.weight`` (which a
    factorized layer no longer has); any hook on one of its submodules makes it take the plain path, which
    calls the layers."""
    return None


def _matrix(layer: nn.Module) -> torch.Tensor:
    if not isinstance(layer, LAYER_TYPES):
        raise EdgeshipError(f"low-rank factorization handles Linear, Conv1d and Conv2d, not {type(layer).__name__}")
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.groups != 1:
        raise EdgeshipError(f"a grouped convolution (groups={layer.groups}) is not factorized")
    w = layer.weight.detach()
    return w.reshape(w.shape[0], -1).double()


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _check_fraction(what: str, v: float) -> None:
    if not 0.0 < v <= 1.0:
        raise EdgeshipError(f"{what} must be in (0, 1], got {v}", hint=f"{what}: 0.9 keeps 90%")


def _check_opts(name: str, opts) -> None:
    if not isinstance(opts, dict):
        raise EdgeshipError(f"low-rank options for {name!r} must be a mapping like {{energy: 0.9}} or null, got {opts!r}")
    unknown = set(opts) - set(CRITERIA)
    given = [k for k in CRITERIA if opts.get(k) is not None]
    if unknown or len(given) != 1:
        raise EdgeshipError(f"low-rank options for {name!r} need exactly one of {', '.join(CRITERIA)}, got {opts!r}",
                            hint="e.g. {energy: 0.9}, {rank_ratio: 0.25} or {rank: 16}; null skips the layer")
