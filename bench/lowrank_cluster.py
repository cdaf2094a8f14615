"""Low-rank factorization and weight clustering, judged on what ships: issue #16's targets, measured.

    python bench/lowrank_cluster.py [--models onet,encoder] [--out bench/lowrank_cluster.md] [--rounds 25]

Two networks:

- ``onet``: MTCNN's O-Net with its pretrained weights from the facenet-pytorch wheel (bench/real_models.py), on
  real inputs: scikit-image's LFW subset crops (the "eval" split: 50 faces, 50 non-faces, 48x48). Its outputs
  (box regression, landmarks, face probability) are compared with the original's (cosine per sample, mean and
  worst) and its face decision (probability >= 0.7, MTCNN's O-Net threshold) with the labels. Fine-tuning has no
  labels here: it distils the original's outputs on the "calib" split (other LFW crops), MSE.
- ``encoder``: a transformer encoder built in code (patch embedding, 3 pre-norm blocks of q/k/v/o and a 4x feed
  forward as plain nn.Linear layers, dim 192), trained here on scikit-learn's 8x8 digits (16 tokens of 2x2
  pixels); top-1 accuracy on the digits test split. Fine-tuning: cross-entropy on the train split.

Variants per network: fp32; low-rank (compress.lowrank.factorize) without and with a short fine-tune; 4-bit
clustering (compress.cluster.cluster) without and with a fine-tune with shared centroids (compress.cluster.finetune);
low-rank + fine-tune then clustered + fine-tune. Each is exported to .onnx, .tflite and .pte (fp32, the edgeship
exporters) and the clustered ones also to a palettized Core ML package (compress.cluster.palettize_unique, the LUT
from the clustered values). Clustering folds each LayerNorm's gain and bias into the Linears that read it first
(compress.cluster.fold_layernorm, given the example inputs), so LiteRT's converter has no gain left to fold into
the clustered weights. Then int8: the fp32 model and the clustered + fine-tuned one exported at static int8 to
.onnx, .tflite and .pte (each exporter's own quantizer, calibrated on the network's calibration data: O-Net the
100 LFW "calib" crops, the encoder 100 digits train images), their int8 weights read back per tensor and per
output channel. Measured: parameters, MACs (Torch-Pruning's counter), file sizes, download size (zip
deflate 9, edgeship.sizes), the most distinct values of any weight tensor read back from each file, latency at 1
thread in onnxruntime, LiteRT and ExecuTorch (quantize.runtime_latency: all files of a network in alternating
rounds), and the quality in each runtime on the real inputs. Writes bench/lowrank_cluster.md (--json: every figure).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FORMATS = ("onnx", "tflite", "executorch")
RUNTIME = {"onnx": "onnxruntime", "tflite": "LiteRT", "executorch": "ExecuTorch"}
ONET_FACE = 0.7          # MTCNN O-Net face threshold (facenet-pytorch's default thresholds[2])


# -- the transformer encoder built in code ---------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm encoder block with every projection a plain nn.Linear (what low-rank factorizes)."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        split = lambda y: y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class DigitsEncoder(nn.Module):
    """8x8 digit -> 16 tokens of 2x2 pixels -> 3 encoder blocks -> mean pool -> 10 logits."""

    def __init__(self, dim: int = 192, heads: int = 4, layers: int = 3, ffn: int = 768):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, ffn) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, image):
        b = image.shape[0]
        patches = image.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        return self.head(self.norm(self.blocks(self.embed(patches) + self.pos)).mean(dim=1))


# -- networks: module, spec, data, quality ------------------------------------------------------------------
@dataclasses.dataclass
class Net:
    name: str
    spec: object                       # edgeship ModelSpec
    eval_x: list                       # list of input tuples (numpy, batch 1)
    quality: callable                  # (list of per-sample output lists) -> dict of metrics
    finetune: callable                 # (module, kind, rows) -> None, in place
    lowrank: dict                      # factorize() keyword arguments
    calib: list = dataclasses.field(default_factory=list)   # int8 calibration inputs (input tuples, batch 1)
    note: str = ""


def _flat(outs) -> np.ndarray:
    return np.concatenate([np.asarray(o, np.float64).ravel() for o in outs])


def _cosines(a: list, b: list) -> list[float]:
    out = []
    for x, y in zip(a, b):
        x, y = _flat(x), _flat(y)
        out.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30)))
    return out


def torch_outputs(module, xs) -> list[list[np.ndarray]]:
    module.eval()
    res = []
    with torch.no_grad():
        for x in xs:
            o = module(*(torch.from_numpy(a) for a in x))
            res.append([t.numpy() for t in (o if isinstance(o, (tuple, list)) else (o,))])
    return res


def onet_net(n_eval: int = 100) -> Net:
    import real_models as R
    from edgeship.compress.train import fit
    from edgeship.data import DataSource
    from edgeship.model import InputSpec, ModelSpec

    module, _ = R.build("mtcnn_onet")
    spec = ModelSpec(module, (InputSpec("image", (1, 3, 48, 48), layout="NCHW"),), name="mtcnn_onet",
                     output_names=("boxes", "landmarks", "prob"))
    samples = R.real_samples("mtcnn_onet", n_eval, "eval")
    labels = np.array([s.label for s in samples])
    eval_x = [s.arrays for s in samples]
    ref = torch_outputs(module, eval_x)
    calib_x = R.real_inputs("mtcnn_onet", 100, "calib")
    calib = np.concatenate([x[0] for x in calib_x])

    def quality(outs):
        cos = _cosines(outs, ref)
        prob = np.array([o[-1].ravel()[1] for o in outs])
        return {"cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
                "accuracy": float(np.mean((prob >= ONET_FACE) == labels))}

    teacher = copy.deepcopy(module).eval()

    def distil(model, x, y):
        with torch.no_grad():
            want = torch.cat([t.flatten(1) for t in teacher(x)], 1)
        got = torch.cat([t.flatten(1) for t in model(x)], 1)
        return nn.functional.mse_loss(got, want), got

    def finetune(model, kind, rows):
        from edgeship.compress.cluster import finetune as cluster_ft
        data = DataSource((calib,), None, batch_size=16, name="lfw-calib")
        kw = dict(epochs=40, lr=2e-4, batch_size=16, seed=0, patience=None)
        if kind == "cluster":
            from edgeship.compress.train import TrainConfig
            cluster_ft(model, data, None, TrainConfig(**kw), rows=rows, step_loss=distil)
        else:
            fit(model, data, None, step_loss=distil, stage="lowrank-finetune", **kw)

    return Net("onet", spec, eval_x, quality, finetune, {"energy": 0.9}, calib=calib_x,
               note=f"MTCNN O-Net (facenet-pytorch 2.6.0 weights), {n_eval} LFW-subset eval crops; fine-tune: distil "
                    "the original's outputs on 100 other LFW crops, 40 epochs, Adam 2e-4")


def encoder_net() -> Net:
    from edgeship.compress.train import TrainConfig, evaluate, train_classifier
    from edgeship.data import load_data
    from edgeship.examples import digits_cnn
    from edgeship.model import InputSpec, ModelSpec

    torch.manual_seed(0)
    module = DigitsEncoder()
    spec = ModelSpec(module, (InputSpec("image", (1, 1, 8, 8), layout="NCHW"),), task="image-classification",
                     labels=[str(i) for i in range(10)], name="digits_encoder")
    data = {s: load_data("digits", digits_cnn(), s) for s in ("train", "val", "test")}
    t0 = time.perf_counter()
    train_classifier(module, data["train"], data["val"], TrainConfig(epochs=40, lr=1e-3, patience=8))
    trained_s = time.perf_counter() - t0
    module.eval()
    test = data["test"]
    eval_x = [(test.xs[0][i:i + 1],) for i in range(len(test))]
    ref = torch_outputs(module, eval_x)

    def quality(outs):
        cos = _cosines(outs, ref)
        pred = np.array([int(np.argmax(o[0])) for o in outs])
        return {"cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
                "accuracy": float(np.mean(pred == test.y))}

    def finetune(model, kind, rows):
        cfg = TrainConfig(epochs=6, lr=2e-4, patience=None) if kind == "cluster" else TrainConfig(epochs=15, lr=5e-4, patience=None)
        if kind == "cluster":
            from edgeship.compress.cluster import finetune as cluster_ft
            cluster_ft(model, data["train"], data["val"], cfg, rows=rows)
        else:
            train_classifier(model, data["train"], data["val"], cfg, stage="lowrank-finetune")

    acc = evaluate(module, test)
    calib_x = [(data["train"].xs[0][i:i + 1],) for i in range(100)]
    return Net("encoder", spec, eval_x, quality, finetune, {"rank_ratio": 0.25, "layers": {"embed": None, "head": None}},
               calib=calib_x, note=f"transformer encoder built in code (3 blocks, dim 192, FFN 768, 16 tokens; {sum(p.numel() for p in module.parameters()):,} "
                    f"parameters), trained here on the digits train split in {trained_s:.0f} s to {acc:.3f} test accuracy; "
                    f"{len(test)} digits test images; fine-tune: cross-entropy on the train split (best val epoch kept), low-rank 15 epochs "
                    "at Adam 5e-4, clustered 6 epochs at 2e-4")


NETS = {"onet": onet_net, "encoder": encoder_net}


# -- one network: variants, exports, measures ---------------------------------------------------------------------
def variants(net: Net, log) -> list[tuple[str, nn.Module, list | None, str]]:
    """(label, module, cluster rows or None, precision exported)."""
    from edgeship.compress.cluster import cluster
    from edgeship.compress.lowrank import factorize, summary

    base = net.spec.module.eval()
    example = net.spec.example_inputs()
    out = [("fp32", base, None)]
    t = time.perf_counter()
    low, lrows = factorize(base, **net.lowrank)
    s = summary(lrows)
    log(f"  low-rank {net.lowrank}: {s['factorized']}/{s['layers']} layers, ranks "
        + ", ".join(f"{r['name']}:{r['rank']}/{r['full_rank']}" for r in lrows if r["factorized"]) + f" ({time.perf_counter() - t:.1f} s)")
    out.append((f"low-rank {_opt(net.lowrank)}", low, None))
    t = time.perf_counter()
    low_ft = copy.deepcopy(low)
    net.finetune(low_ft, "lowrank", None)
    log(f"  low-rank fine-tune {time.perf_counter() - t:.1f} s")
    out.append((f"low-rank {_opt(net.lowrank)} + ft", low_ft, None))
    t = time.perf_counter()
    clu, crows = cluster(base, bits=4, example_args=example)
    log(f"  cluster 4 bits: {sum(r['clustered'] for r in crows)} weights ({sum(r['folded_norm'] is not None for r in crows)} "
        f"with a LayerNorm folded in), SQNR "
        f"{min(r['sqnr_db'] for r in crows if r['clustered']):.1f}..{max(r['sqnr_db'] for r in crows if r['clustered']):.1f} dB "
        f"({time.perf_counter() - t:.1f} s)")
    out.append(("cluster 4-bit", clu, crows))
    t = time.perf_counter()
    clu_ft = copy.deepcopy(clu)
    net.finetune(clu_ft, "cluster", crows)
    log(f"  cluster fine-tune {time.perf_counter() - t:.1f} s")
    out.append(("cluster 4-bit + ft", clu_ft, crows))
    both, brows = cluster(low_ft, bits=4, example_args=example)
    net.finetune(both, "cluster", brows)
    out.append((f"low-rank + ft, cluster 4-bit + ft", both, brows))
    out = [(label, m, rows, "fp32") for label, m, rows in out]
    # int8 where the format allows it (onnx, tflite, executorch): the plain model and the clustered + fine-tuned one
    return out + [("fp32 → int8", base, None, "int8"), ("cluster 4-bit + ft → int8", clu_ft, crows, "int8")]


def _opt(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if k != "layers")


def measure(net: Net, work: Path, rounds: int, log) -> list[dict]:
    from edgeship.compress.cluster import palettize_mlpackage
    from edgeship.compress.prune import count_macs, count_params
    from edgeship.compress.quantize import runtime_latency
    from edgeship.export import get_exporter
    from edgeship._io import size_path as file_size
    from edgeship.sizes import download_size
    from edgeship_runtime import open_runtime

    rows = []
    example = net.spec.example_inputs()
    for i, (label, module, crows, precision) in enumerate(variants(net, log)):
        spec = dataclasses.replace(net.spec, module=module)
        int8 = precision == "int8"
        row = {"network": net.name, "variant": label, "precision": precision, "params": count_params(module),
               "macs": count_macs(module, example), "files": {}, "download": {}, "distinct_max": {},
               "quality": {"pytorch": net.quality(torch_outputs(module, net.eval_x))}}
        for fmt in FORMATS + (("coreml",) if not int8 and (crows is not None or i == 0) else ()):
            t = time.perf_counter()
            try:
                made = get_exporter(fmt).export(spec, work / f"v{i}" / fmt, precision, calib=net.calib if int8 else None)
                if made.precision != precision:
                    raise RuntimeError(f"made {made.precision}, not {precision}")
                path = made.path
                if fmt == "coreml" and crows is not None:
                    path = palettize_mlpackage(path, work / f"v{i}" / "coreml" / "model.palettized.mlpackage")
            except Exception as e:   # noqa: BLE001 - a failing format is reported, the others go on
                row["files"][fmt] = f"failed: {type(e).__name__}: {str(e)[:160]}"
                log(f"  {label} {fmt}: FAILED {e}")
                continue
            row["files"][fmt] = {"path": str(path), "bytes": file_size(path), "export_s": round(time.perf_counter() - t, 1)}
            row["download"][fmt] = download_size(path)
            if crows is not None or int8:
                row["distinct_max"][fmt] = read_back(path, layer_shapes(module, crows), int8)
            if fmt in FORMATS:
                rt = open_runtime(path, threads=1)
                shapes = torch_outputs(module, net.eval_x[:1])[0]
                outs = [_align(rt.run(list(x)), shapes) for x in net.eval_x]
                row["quality"][fmt] = net.quality(outs)
        log(f"  {label}: params {row['params']:,} MACs {row['macs']:,} " + json.dumps(
            {k: v for k, v in row.items() if k in ("download", "distinct_max")}) + " " + json.dumps(row["quality"]))
        rows.append(row)
    # latency: every file of this network in one process, alternating rounds (a busy machine slows all alike)
    paths = [(r_i, fmt, r["files"][fmt]["path"]) for r_i, r in enumerate(rows) for fmt in FORMATS
             if isinstance(r["files"].get(fmt), dict)]
    t = time.perf_counter()
    sample = tuple(torch.from_numpy(a) for a in net.eval_x[0])
    ms = runtime_latency([p for _, _, p in paths], sample, rounds=rounds, runs=20)
    log(f"  latency: {len(paths)} files, {rounds} rounds x 20 runs, {time.perf_counter() - t:.0f} s")
    for (r_i, fmt, _), v in zip(paths, ms):
        rows[r_i].setdefault("latency_ms", {})[fmt] = round(v, 4)
    return rows


def layer_shapes(module: nn.Module, crows: list | None) -> set[tuple]:
    """The shapes (dimensions longer than 1, sorted: a converter may permute them) of the layer weights: the
    clustered ones, or every Linear/conv weight of an unclustered model."""
    from edgeship.compress.cluster import _weight_names

    if crows is not None:
        shapes = [r["shape"] for r in crows if r["clustered"]]
    else:
        shapes = [list(getattr(m, p).shape) for m in module.modules() for p in _weight_names(m)
                  if isinstance(getattr(m, p, None), torch.Tensor)]
    return {tuple(sorted(d for d in s if d > 1)) for s in shapes}


def read_back(path, layers: set[tuple], int8: bool) -> dict:
    """Distinct values of the weight tensors read back from ``path`` (compress.cluster.weight_tensors, those with
    >= 2 dimensions longer than 1, as compress.cluster.distinct_values counts them): over the layer weights (shape in
    ``layers``), ``le_16`` of ``tensors`` with <= 16 values and the ``max``; ``other``: the most values in a tensor
    that is no layer's weight (the encoder's position table), else 0. With ``int8``, per output channel of the int8
    layer weights too: per-channel int8 gives each output channel its own scale, so a channel of <= 16 clustered
    values stays <= 16 int8 values. The output channel is the first axis in what these exporters write (ONNX Gemm and
    Conv, TFLite fully-connected and OHWI conv, XNNPACK's weights)."""
    from edgeship.compress.cluster import weight_tensors

    tensors = {k: a for k, a in weight_tensors(path).items() if sum(d > 1 for d in a.shape) >= 2}
    mine = {k: a for k, a in tensors.items() if tuple(sorted(d for d in a.shape if d > 1)) in layers}
    counts = {k: int(np.unique(a).size) for k, a in mine.items()}
    out = {"le_16": sum(v <= 16 for v in counts.values()), "tensors": len(counts), "max": max(counts.values(), default=0),
           "other": max((int(np.unique(a).size) for k, a in tensors.items() if k not in mine), default=0)}
    if int8:
        per_ch = {}
        for k, a in mine.items():
            if a.dtype == np.int8:
                a = a.reshape([d for d in a.shape if d > 1])
                per_ch[k] = max(int(np.unique(a[j]).size) for j in range(a.shape[0]))
        out.update(channel_le_16=sum(v <= 16 for v in per_ch.values()), int8_tensors=len(per_ch),
                   channel_max=max(per_ch.values(), default=0))
    return out


def _align(outs, ref):
    """The runtime's outputs in the reference's order (matched by shape where the order differs)."""
    outs = [np.asarray(o) for o in outs]
    if [o.shape for o in outs] == [r.shape for r in ref]:
        return outs
    pool = list(outs)
    got = []
    for r in ref:
        k = next(j for j, o in enumerate(pool) if o.size == r.size)
        got.append(pool.pop(k).reshape(r.shape))
    return got


# -- report ------------------------------------------------------------------------------------------------------
def _mb(n: int) -> str:
    return f"{n / 1e6:.3f}"


def markdown(results: dict, meta: dict) -> str:
    L = ["# Low-rank factorization and weight clustering: what ships and what downloads", "",
         f"`{meta['command']}` — {meta['wall_s']:.0f} s wall on {meta['cpu']} ({meta['flags']}), "
         f"torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, ai-edge-litert {meta['litert']}, "
         f"executorch {meta['executorch']}, coremltools {meta['coremltools']}. Latency: median ms per run at 1 thread, "
         "all files of a network in the same process in alternating rounds (compress.quantize.runtime_latency).", ""]
    for name, res in results.items():
        rows = res["rows"]
        base = rows[0]
        L += [f"## {name}", "", res["note"], "",
              "| variant | params | MACs | .onnx MB | download MB: .onnx / .tflite / .pte / .mlpackage | × fp32 file (worst format) | weight tensors read back with ≤ 16 values |",
              "|---|---:|---:|---:|---|---:|---|"]
        for r in rows:
            dl = " / ".join(_mb(r["download"][f]) if f in r["download"] else "–" for f in FORMATS + ("coreml",))
            ratio = max((r["download"][f] / base["files"][f]["bytes"]) for f in FORMATS + ("coreml",)
                        if f in r["download"] and isinstance(base["files"].get(f), dict))
            distinct = ", ".join(
                f"{f} {v['le_16']}/{v['tensors']}" + (f" (max {v['max']})" if v["max"] > 16 else "")
                + (f", per channel {v['channel_le_16']}/{v['int8_tensors']}" + (f" (max {v['channel_max']})" if v["channel_max"] > 16 else "")
                   if "channel_max" in v else "")
                for f, v in r["distinct_max"].items()) or "–"
            others = {v["other"] for v in r["distinct_max"].values() if v.get("other")}
            if others:
                distinct += f"; not a layer's weight: up to {max(others)} values"
            onnx = r["files"].get("onnx")
            L.append(f"| {r['variant']} | {r['params']:,} ({base['params'] / r['params']:.2f}×) | {r['macs']:,} "
                     f"({base['macs'] / r['macs']:.2f}×) | {_mb(onnx['bytes']) if isinstance(onnx, dict) else onnx} | "
                     f"{dl} | {ratio:.3f} | {distinct} |")
        L += ["", "× fp32 file: the variant's download size over the fp32 model's file size in the same format; the "
              "issue's measure, against the fp32 file's download size, is in the next table. Last column: the layers' "
              "weight tensors (clustered ones; for fp32 → int8 every Linear/conv weight) read back from each file with "
              "≤ 16 distinct values, and the most values in a tensor that is no layer's weight (the encoder's position "
              "table). → int8: static int8 exports (per-channel int8 weights), also counted per output channel.", ""]
        L += ["| variant | download × fp32 download: onnx / tflite / pte / coreml | latency ms: onnxruntime / LiteRT / ExecuTorch | speed-up vs fp32 |",
              "|---|---|---|---|"]
        for r in rows:
            dlr = " / ".join(f"{r['download'][f] / base['download'][f]:.3f}" if f in r["download"] and f in base["download"]
                             else "–" for f in FORMATS + ("coreml",))
            lat = r.get("latency_ms", {})
            ms = " / ".join(f"{lat[f]:.3f}" if f in lat else "–" for f in FORMATS)
            sp = " / ".join(f"{base['latency_ms'][f] / lat[f]:.2f}×" if f in lat and f in base.get("latency_ms", {}) else "–"
                            for f in FORMATS)
            L.append(f"| {r['variant']} | {dlr} | {ms} | {sp} |")
        L += ["", "| variant | PyTorch: cosine mean (min) / accuracy | onnxruntime | LiteRT | ExecuTorch |", "|---|---|---|---|---|"]
        for r in rows:
            q = r["quality"]
            cell = lambda k: (f"{q[k]['cosine']:.5f} ({q[k]['cosine_min']:.4f}) / {q[k]['accuracy']:.3f}"  # noqa: E731
                              if k in q else "–")
            L.append(f"| {r['variant']} | {cell('pytorch')} | {cell('onnx')} | {cell('tflite')} | {cell('executorch')} |")
        L += [""]
    L += ["## Targets", ""] + meta["targets"] + [""]
    L += ["## Notes", "", *NOTES, ""]
    return "\n".join(L)


NOTES = [
    "- **LayerNorm gains folded before clustering** (compress.cluster.fold_layernorm, run by cluster() when given "
    "example_args): LiteRT's converter folds each LayerNorm's gain into the Linears that read it (column j times "
    "gamma_j). On a clustered model that multiplied the 16 values of each q/k/v and first feed-forward Linear into up "
    "to 16 x 192 in the .tflite only (the previous run of this script: 8/21 weight tensors with <= 16 values, "
    "download 0.39x the fp32 download against 0.20x in the other formats). Now each LayerNorm whose output only "
    "Linears read has its gain and bias folded into them first (W' = W diag(gamma), b' = b + W beta; exact in float) "
    "and keeps gain 1 and bias 0, frozen through the fine-tune, so the clustered values are the ones every converter "
    "ships: 12 Linears of the encoder's 3 blocks. The final LayerNorm (read through the mean over tokens) and any "
    "LayerNorm that also feeds a residual are left as they are. The one tensor with more than 16 values is the "
    "position table `pos` (a bare parameter, 16x192 = 3072 values, not a layer and not clustered).",
    "- **Clustering + int8**: the int8 exporters (static, each format's own quantizer, calibrated on the network's "
    "calibration data) quantize each output channel with its own scale, so a channel's <= 16 clustered values become "
    "<= 16 int8 values (read back: at most 16 per output channel in every clustered layer of every file), while a "
    "whole tensor holds more (its channels' scales differ). No weight-rescaling int8 remedy ran (SmoothQuant or "
    "cross-layer equalization would scale columns or channels and break that count). The PyTorch column of a "
    "→ int8 row is the float model it was quantized from. The .tflite keeps the encoder's position table in float, "
    "the .onnx and .pte quantize it.",
    "- **Core ML for O-Net** fails in coremltools 9.0 (PReLU on a rank-3 input needs one slope); the encoder's "
    "clustered packages are palettized with their own values as LUTs (compress.cluster.palettize_unique) and their "
    "size is the .mlpackage column; Core ML latency and outputs need macOS (not run).",
    "- **MACs** are Torch-Pruning's count (conv, linear and norm layers; the encoder's attention matmuls, 16x16 "
    "tokens, are not counted). Latency at these sizes (0.2-0.6 ms) includes each runtime's fixed per-call cost.",
]


def targets(results: dict) -> list[str]:
    out = ["| target | network | measured | met |", "|---|---|---|---|"]
    for name, res in results.items():
        rows = res["rows"]
        base = rows[0]
        for r in rows[1:]:
            if r["variant"].startswith("low-rank") and r["variant"].endswith("+ ft") and "cluster" not in r["variant"]:
                p, m = base["params"] / r["params"], base["macs"] / r["macs"]
                sp = {f: base["latency_ms"][f] / r["latency_ms"][f] for f in FORMATS
                      if f in r.get("latency_ms", {}) and f in base.get("latency_ms", {})}
                q, q0 = r["quality"]["pytorch"], base["quality"]["pytorch"]
                out.append(f"| low-rank: ≥ 1.5× fewer params and MACs | {name} | {p:.2f}× / {m:.2f}× | {'yes' if p >= 1.5 and m >= 1.5 else 'no'} |")
                fast = sum(v >= 1.3 for v in sp.values())
                out.append(f"| low-rank: ≥ 1.3× faster in ≥ 2 runtimes | {name} | " + ", ".join(f"{RUNTIME[f]} {v:.2f}×" for f, v in sp.items())
                           + f" | {'yes' if fast >= 2 else 'no'} |")
                acc = " ".join(f"{RUNTIME.get(k, k)} {(r['quality'][k]['accuracy'] - base['quality'][k]['accuracy']) * 100:+.1f} pt"
                               for k in ("pytorch",) + FORMATS if k in r["quality"] and k in base["quality"])
                worst_cos = min(r["quality"][k]["cosine"] for k in ("pytorch",) + FORMATS if k in r["quality"])
                ok = all(r["quality"][k]["accuracy"] >= base["quality"][k]["accuracy"] - 0.01
                         for k in ("pytorch",) + FORMATS if k in r["quality"] and k in base["quality"])
                out.append(f"| low-rank + ft: within 1 point (or cosine ≥ 0.99) | {name} | accuracy {acc}; cosine ≥ {worst_cos:.4f} | "
                           f"{'yes' if ok or worst_cos >= 0.99 else 'no'} |")
            if r["variant"] == "cluster 4-bit + ft → int8":
                plain = next(x for x in rows if x["variant"] == "fp32 → int8")
                fp32c = next(x for x in rows if x["variant"] == "cluster 4-bit + ft")
                fm = [f for f in FORMATS if f in r["download"] and f in plain["download"]]
                rr = {f: r["download"][f] / base["download"][f] for f in fm}
                pr = {f: plain["download"][f] / base["download"][f] for f in fm}
                cr = {f: fp32c["download"][f] / base["download"][f] for f in fm if f in fp32c["download"]}
                out.append(f"| cluster 4-bit + int8: download ≤ 0.35× fp32 download and below int8 alone, every int8 format | {name} | "
                           + ", ".join(f"{f} {rr[f]:.3f}× (int8 alone {pr[f]:.3f}×, clustered fp32 {cr.get(f, float('nan')):.3f}×)" for f in fm)
                           + f" | {'yes' if len(fm) == len(FORMATS) and all(rr[f] <= 0.35 and rr[f] < pr[f] for f in fm) else 'no'} |")
                ok = all(r["quality"][k]["accuracy"] >= base["quality"][k]["accuracy"] - 0.01
                         for k in FORMATS if k in r["quality"]) and all(k in r["quality"] for k in FORMATS)
                acc = " ".join(f"{RUNTIME.get(k, k)} {(r['quality'][k]['accuracy'] - base['quality'][k]['accuracy']) * 100:+.1f} pt "
                               f"(cos {r['quality'][k]['cosine']:.4f})" for k in FORMATS if k in r["quality"])
                out.append(f"| cluster 4-bit + int8: within 1 point, each runtime | {name} | {acc} | {'yes' if ok else 'no'} |")
                out.append(f"| cluster 4-bit + int8: ≤ 16 int8 values per output channel | {name} | "
                           + ", ".join(f"{f} {v['channel_le_16']}/{v['int8_tensors']} (max {v['channel_max']})"
                                       for f, v in r["distinct_max"].items())
                           + f" | {'yes' if all(v['channel_max'] <= 16 for v in r['distinct_max'].values()) else 'no'} |")
            if r["variant"] == "cluster 4-bit + ft":
                worst = max(r["download"][f] / base["download"][f] for f in r["download"] if f in base["download"])
                out.append(f"| cluster 4-bit: download ≤ 0.35× fp32 download, every format | {name} | ≤ {worst:.3f}× | {'yes' if worst <= 0.35 else 'no'} |")
                ok = all(r["quality"][k]["accuracy"] >= base["quality"][k]["accuracy"] - 0.01
                         for k in ("pytorch",) + FORMATS if k in r["quality"])
                acc = " ".join(f"{RUNTIME.get(k, k)} {(r['quality'][k]['accuracy'] - base['quality'][k]['accuracy']) * 100:+.1f} pt"
                               for k in ("pytorch",) + FORMATS if k in r["quality"])
                out.append(f"| cluster 4-bit + ft: within 1 point | {name} | {acc} | {'yes' if ok else 'no'} |")
                others = max((v["other"] for v in r["distinct_max"].values()), default=0)
                out.append(f"| cluster: ≤ 16 distinct values per clustered layer's weight tensor in every file | {name} | "
                           + ", ".join(f"{f} {v['le_16']}/{v['tensors']} (max {v['max']})" for f, v in r["distinct_max"].items())
                           + (f"; a tensor that is no layer's weight: up to {others} values" if others else "")
                           + f" | {'yes' if all(v['max'] <= 16 for v in r['distinct_max'].values()) else 'no'} |")
    return out


def cpu() -> tuple[str, str]:
    name = platform.processor() or "unknown CPU"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                f = set(line.split(":", 1)[1].split())
                flags = ", ".join(x for x in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if x in f)
                break
    except OSError:
        pass
    return name, flags


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(NETS))
    ap.add_argument("--out", default=str(HERE / "lowrank_cluster.md"))
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--work", default=None, help="where the exported files go (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.0f} s] {s}", flush=True)  # noqa: E731
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for name in args.models.split(","):
            log(f"{name}: building")
            net = NETS[name]()
            log(f"{name}: {net.note}")
            results[name] = {"note": net.note, "rows": measure(net, work / name, args.rounds, log)}
    import ai_edge_litert
    import coremltools
    import executorch
    import onnxruntime
    from importlib.metadata import version
    name, flags = cpu()
    meta = {"command": "python bench/lowrank_cluster.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
            "wall_s": time.perf_counter() - t0, "cpu": name, "flags": flags or "no AVX2", "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "litert": version("ai-edge-litert"), "executorch": version("executorch"),
            "coremltools": coremltools.__version__, "targets": targets(results)}
    md = markdown(results, meta)
    Path(args.out).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
