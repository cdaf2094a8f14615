"""Real architectures from Hugging Face transformers configs, as edgeship MODEL factories; `make architectures`
exports each to every format at fp32 and fp16 and writes the conformance table bench/architectures.md.

    edgeship export bench/architectures.py:resnet --out dist/resnet
    edgeship export bench/architectures.py:bert --formats onnx,tflite --precision fp16 --out dist/bert
    python bench/architectures.py [--models resnet,bert] [--formats onnx,tflite] [--precisions fp32]
                                  [--samples 3] [--work DIR]         # writes bench/architectures.{md,json}

Every model is the library's own class (ResNetForImageClassification, BertForSequenceClassification, WhisperEncoder,
...) built from a small config with random initialisation: nothing is downloaded (no from_pretrained). So that the
parity check can tell a right artifact from a wrong one (verify.degenerate_reference reports "inconclusive" for
outputs that are zero, denormal or the same for every input), each factory

- gives every normalisation layer a non-trivial affine (weight ~ U(0.5, 1.5), bias ~ N(0, 0.1)) and every
  BatchNorm running statistics measured on random inputs (a few forward passes with only the BatchNorms in train
  mode, cumulative averages), so that folding BN into the convolutions is really tested;
- re-initialises the output head with std 0.05 and a nonzero bias (HF starts biases at zero; torchvision's ViT
  starts its head at zero, which once made verification pass on nothing);
- for ConvNeXt, starts the layer scale at 0.5 instead of 1e-6, so the residual blocks contribute.

Each wrapper's forward returns one tensor: logits for the classifiers and GPT-2 (``use_cache=False``), the
last hidden state for the encoders (DistilBERT, Whisper's encoder, Wav2Vec2). Integer inputs carry no ranges here:
edgeship reads them from the model (``input_ids`` over the vocabulary, ``token_type_ids`` over the type vocabulary,
``attention_mask`` a 0/1 padding mask), as it does for a user's model.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "toolchain"))

from edgeship.bench.devices import local_cpu_model  # noqa: E402
from edgeship.model import InputSpec, ModelSpec  # noqa: E402

IMAGE = 64        # vision input side (ViT: 32)
SEQ = 32          # text sequence length
VOCAB = 1000
CLASSES = 10
FORMATS = ("onnx", "tflite", "executorch", "coreml")
PRECISIONS = ("fp32", "fp16")
IMAGENET = {"color_order": "RGB", "value_range": [0, 1], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# A small transformer body shared by the text, ViT and audio configs.
BODY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


class Logits(nn.Module):
    """Calls the HF model and returns one tensor: ``out[key]`` (logits or last_hidden_state)."""

    def __init__(self, model: nn.Module, key: str = "logits"):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, *args):
        return self.model(*args, return_dict=True)[self.key]


class Keywords(Logits):
    """Like :class:`Logits`, for models whose inputs must be given by name (input_ids, attention_mask, ...)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], key: str = "logits"):
        super().__init__(model, key)
        self.names = names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args)), return_dict=True)[self.key]


def _realistic(module: nn.Module, inputs: tuple[InputSpec, ...], head: nn.Module | None, seed: int = 0,
               passes: int = 4) -> nn.Module:
    """Non-trivial norm affines, BatchNorm running statistics from a few random batches, a head with std 0.05 and
    a nonzero bias; returns ``module`` in eval mode."""
    g = torch.Generator().manual_seed(seed)
    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, norms) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        if head is not None:
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.05)
            if head.bias is not None:
                head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.05)
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    module.eval()
    if bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None          # cumulative average over the passes
            bn.train()
        batch = [InputSpec(i.name, (4,) + tuple(i.shape[1:]), i.dtype, i.layout, i.high, i.low, i.kind) for i in inputs]
        with torch.no_grad():
            for _ in range(passes):
                module(*(i.random(g) for i in batch))
        for bn in bns:
            bn.momentum = 0.1
        module.eval()
    return module


def _image(name: str, model: nn.Module, head: nn.Module, size: int = IMAGE) -> ModelSpec:
    inputs = (InputSpec("pixel_values", (1, 3, size, size), layout="NCHW"),)
    module = _realistic(Logits(model), inputs, head)
    return ModelSpec(module, inputs, task="image-classification", labels=[f"class_{i}" for i in range(CLASSES)],
                     name=name, preprocess=IMAGENET)


def _seeded(fn):
    def factory(*args, **kwargs):
        torch.manual_seed(0)
        return fn(*args, **kwargs)
    factory.__name__, factory.__doc__ = fn.__name__, fn.__doc__
    return factory


# --- vision -------------------------------------------------------------------------------------------------------

@_seeded
def resnet() -> ModelSpec:
    """ResNet (basic blocks, depths 1-1-1-1, widths 16-128) at 1x3x64x64: convs + BatchNorm, 10 classes."""
    from transformers import ResNetConfig, ResNetForImageClassification
    cfg = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
                       num_labels=CLASSES)
    m = ResNetForImageClassification(cfg)
    return _image("resnet", m, m.classifier[-1])


@_seeded
def mobilenet_v2() -> ModelSpec:
    """MobileNetV2 (depth multiplier 0.35, all 17 inverted-residual blocks) at 1x3x64x64: depthwise convs,
    BatchNorm, ReLU6, TF-style padding off."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    cfg = MobileNetV2Config(depth_multiplier=0.35, image_size=IMAGE, num_labels=CLASSES, tf_padding=False)
    m = MobileNetV2ForImageClassification(cfg)
    return _image("mobilenet_v2", m, m.classifier)


@_seeded
def mobilevit() -> ModelSpec:
    """MobileViT (XXS-like, hidden 32-48-64, 2 heads) at 1x3x64x64: MobileNetV2 blocks + unfold/fold attention."""
    from transformers import MobileViTConfig, MobileViTForImageClassification
    cfg = MobileViTConfig(image_size=IMAGE, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 24, 32, 48, 64],
                          num_attention_heads=2, expand_ratio=2.0, num_labels=CLASSES)
    m = MobileViTForImageClassification(cfg)
    return _image("mobilevit", m, m.classifier)


@_seeded
def efficientnet() -> ModelSpec:
    """EfficientNet (width 0.25, depth 0.25 of B7's config) at 1x3x64x64: MBConv with squeeze-excitation, swish."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification
    cfg = EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.25, image_size=IMAGE, hidden_dim=320,
                             num_labels=CLASSES)
    m = EfficientNetForImageClassification(cfg)
    return _image("efficientnet", m, m.classifier)


@_seeded
def convnext() -> ModelSpec:
    """ConvNeXt (depths 1-1-1-1, widths 16-128, layer scale 0.5) at 1x3x64x64: 7x7 depthwise convs, LayerNorm."""
    from transformers import ConvNextConfig, ConvNextForImageClassification
    cfg = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], image_size=IMAGE,
                         layer_scale_init_value=0.5, num_labels=CLASSES)
    m = ConvNextForImageClassification(cfg)
    return _image("convnext", m, m.classifier)


@_seeded
def vit() -> ModelSpec:
    """ViT (2 layers, hidden 64, 4 heads, patch 8) at 1x3x32x32: 16 patches + CLS, 10 classes."""
    from transformers import ViTConfig, ViTForImageClassification
    cfg = ViTConfig(image_size=32, patch_size=8, num_labels=CLASSES, **BODY)
    m = ViTForImageClassification(cfg)
    return _image("vit", m, m.classifier, size=32)


# --- text ---------------------------------------------------------------------------------------------------------

@_seeded
def bert() -> ModelSpec:
    """BERT (2 layers, hidden 64, vocabulary 1000) classifying 32 tokens: input_ids, attention_mask (0/1 with
    padding), token_type_ids; 4 classes from the pooled CLS."""
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=VOCAB, max_position_embeddings=64, num_labels=4, **BODY)
    m = BertForSequenceClassification(cfg)
    names = ("input_ids", "attention_mask", "token_type_ids")
    inputs = tuple(InputSpec(n, (1, SEQ), "int64", layout="NT") for n in names)
    return ModelSpec(_realistic(Keywords(m, names), inputs, m.classifier), inputs, task="text-classification",
                     labels=["a", "b", "c", "d"], name="bert")


@_seeded
def distilbert() -> ModelSpec:
    """DistilBERT (2 layers, dim 64, vocabulary 1000) over 32 tokens with a padding mask: the last hidden state."""
    from transformers import DistilBertConfig, DistilBertModel
    cfg = DistilBertConfig(vocab_size=VOCAB, max_position_embeddings=64, dim=64, n_layers=2, n_heads=4, hidden_dim=128)
    m = DistilBertModel(cfg)
    names = ("input_ids", "attention_mask")
    inputs = tuple(InputSpec(n, (1, SEQ), "int64", layout="NT") for n in names)
    return ModelSpec(_realistic(Keywords(m, names, "last_hidden_state"), inputs, None), inputs, task="embedding",
                     name="distilbert")


@_seeded
def gpt2() -> ModelSpec:
    """GPT-2 (2 layers, 64 wide, vocabulary 1000, tied embeddings) over 32 tokens, use_cache=False: next-token
    logits (1x32x1000)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, use_cache=False,
                     bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    m = GPT2LMHeadModel(cfg)
    inputs = (InputSpec("input_ids", (1, SEQ), "int64", layout="NT"),)
    return ModelSpec(_realistic(Keywords(m, ("input_ids",)), inputs, None), inputs, name="gpt2")


# --- audio --------------------------------------------------------------------------------------------------------

@_seeded
def whisper_encoder() -> ModelSpec:
    """Whisper's encoder (2 layers, d_model 64, 80 mel bins, 200 frames = 2 s): two convs (GELU), sinusoidal
    positions, pre-LayerNorm attention; the last hidden state (1x100x64)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    cfg = WhisperConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=80,
                        max_source_positions=100, max_target_positions=64,
                        pad_token_id=VOCAB - 1, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
                        decoder_start_token_id=VOCAB - 2)
    m = WhisperEncoder(cfg)
    inputs = (InputSpec("input_features", (1, 80, 200), layout=None),)   # (batch, mel bins, frames): no manifest layout names it
    return ModelSpec(_realistic(Logits(m, "last_hidden_state"), inputs, None), inputs, task="embedding",
                     name="whisper_encoder")


@_seeded
def wav2vec2() -> ModelSpec:
    """Wav2Vec2 (conv feature encoder 3 layers of 32, GroupNorm; 2 transformer layers of 64; weight-normed
    convolutional positions) over 4000 samples (0.25 s at 16 kHz): the last hidden state (1x199x64)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    cfg = Wav2Vec2Config(conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
                         vocab_size=VOCAB, **BODY)
    m = Wav2Vec2Model(cfg)
    inputs = (InputSpec("input_values", (1, 4000), layout="NT"),)
    return ModelSpec(_realistic(Logits(m, "last_hidden_state"), inputs, None), inputs, task="embedding",
                     name="wav2vec2")


MODELS = {f.__name__: f for f in (resnet, mobilenet_v2, mobilevit, efficientnet, convnext, vit,
                                  bert, distilbert, gpt2, whisper_encoder, wav2vec2)}
MODALITY = {"resnet": "vision", "mobilenet_v2": "vision", "mobilevit": "vision", "efficientnet": "vision",
            "convnext": "vision", "vit": "vision", "bert": "text", "distilbert": "text", "gpt2": "text",
            "whisper_encoder": "audio", "wav2vec2": "audio"}


# --- the conformance table ----------------------------------------------------------------------------------------

def _export(name: str, formats, precisions, samples: int, work: Path) -> dict:
    """``edgeship export bench/architectures.py:NAME`` in a child process (a converter that ends its process takes
    only its model down); returns report.json's dict, or {"error": ...} when no report was written."""
    import subprocess
    out = work / name
    argv = [sys.executable, "-m", "edgeship.cli", "export", f"{Path(__file__).resolve()}:{name}", "--out", str(out),
            "--force", "--formats", ",".join(formats), "--precision", ",".join(precisions), "--samples", str(samples)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=os.environ | {"NO_COLOR": "1"})
    wall = time.perf_counter() - t0
    report_path = out / "report.json"
    if report_path.exists() and report_path.stat().st_mtime >= time.time() - wall - 1:
        report = json.loads(report_path.read_text())
    else:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]       # the CLI's one-line message, then its hint
        report = {"error": (errors or lines or [f"exit code {proc.returncode}"])[-1]}
    report["wall_s"] = round(wall, 1)
    report["returncode"] = proc.returncode
    return report


def _row(art: dict) -> dict:
    parity = art.get("parity") or {}
    if art["status"] != "ok":
        status, why = "export failed", art.get("error") or ""
    elif parity.get("status") == "not run":
        status, why = "not run: needs macOS" if "macOS" in (parity.get("reason") or "") else "not run", parity.get("reason")
    else:
        status, why = parity.get("status", "?"), parity.get("reason")
    return {"format": art["format"], "precision": art["precision"], "status": status, "reason": why,
            "cosine": parity.get("cosine"), "max_abs": parity.get("max_abs"), "runtime": parity.get("runtime"),
            "export_s": art.get("export_s"), "size_bytes": art.get("size_bytes"), "notes": art.get("notes") or []}


def _fmt_size(n) -> str:
    return "" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _markdown(results: dict, meta: dict) -> str:
    lines = ["# Real architectures: conformance in every runtime", "",
             "Generated by `make architectures` (`python bench/architectures.py`): each model of "
             "bench/architectures.py (Hugging Face transformers classes built from small configs, random weights "
             "with BatchNorm statistics and heads that make the outputs depend on the input) exported with "
             "`edgeship export bench/architectures.py:NAME --formats " + ",".join(meta["formats"]) +
             " --precision " + ",".join(meta["precisions"]) + f" --samples {meta['samples']}`, each artifact run in "
             "its own runtime against PyTorch on the same seeded random inputs (fp32: cosine >= 0.9999, fp16: "
             ">= 0.999; cosine is the worst sample's). Core ML packages are converted and inspected here; their "
             "prediction needs macOS.", "",
             f"Run {meta['date']} on {meta['cpu']} ({meta['cores']} cores, {meta['platform']}); transformers "
             f"{meta['transformers']}, torch {meta['torch']}; {meta['total_s'] / 60:.1f} min in all.", "",
             "| model | params | format | precision | status | cosine | max abs | export s | size |",
             "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    problems = []
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | | all | | export failed | | | | |")
            problems.append((name, "all formats", r["error"]))
            continue
        for row in r["rows"]:
            cos = "" if row["cosine"] is None or row["status"].startswith("not run") else f"{row['cosine']:.6f}"
            mab = "" if row["max_abs"] is None or row["status"].startswith("not run") else f"{row['max_abs']:.2g}"
            exp = "" if row["export_s"] is None else f"{row['export_s']:.1f}"
            lines.append(f"| {name} | {r['params_m']:.2f} M | {row['format']} | {row['precision']} | {row['status']} | "
                         f"{cos} | {mab} | {exp} | {_fmt_size(row['size_bytes'])} |")
            if row["status"] in ("fail", "inconclusive", "export failed") or (
                    row["status"] == "pass" and row["reason"]):
                problems.append((name, f"{row['format']} {row['precision']}", row["reason"]))
    counts: dict[str, int] = {}
    for r in results.values():
        for row in r.get("rows", []):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines += ["", "Totals: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".", ""]
    lines += ["## Failures and notes", ""]
    if problems:
        lines += [f"- **{m}, {where}**: {msg}" for m, where, msg in problems]
    else:
        lines.append("None: every artifact that can run here passed.")
    sizes = []   # an fp16 file should be about half the fp32 one: say where it is not, with the exporter's notes
    for name, r in results.items():
        by = {(row["format"], row["precision"]): row for row in r.get("rows", [])}
        for fmt in dict.fromkeys(f for f, _ in by):
            a, b = by.get((fmt, "fp32")), by.get((fmt, "fp16"))
            if a and b and a["size_bytes"] and b["size_bytes"] and b["size_bytes"] > 0.75 * a["size_bytes"]:
                why = [n for n in b["notes"] if "simplified" in n]
                sizes.append(f"- **{name}, {fmt}**: fp16 {_fmt_size(b['size_bytes'])} is "
                             f"{b['size_bytes'] / a['size_bytes']:.0%} of fp32 ({_fmt_size(a['size_bytes'])})"
                             + (f"; the exporter noted: {why[0]}" if why else ""))
    if sizes:
        lines += ["", "## fp16 files not smaller than fp32", "", *sizes]
    lines += ["", "## Models", "", "| model | modality | input | output | what it is |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {MODALITY[name]} | {r.get('inputs', '')} | {r.get('output', '')} | "
                     f"{' '.join((MODELS[name].__doc__ or '').split()).split(': ')[0]} |")
    return "\n".join(lines) + "\n"


def _describe(name: str) -> dict:
    from edgeship.model import load
    spec = load(f"{Path(__file__).resolve()}:{name}")
    out = spec.reference(spec.example_inputs())[0]
    ins = ", ".join(f"{i.name} {'x'.join(map(str, i.shape))}" + (f" {i.dtype}" if i.dtype != "float32" else "")
                    + (" (mask)" if i.kind == "mask" else f" (0..{i.range[1]})" if i.integer and i.range else "")
                    for i in spec.inputs)
    return {"params_m": sum(p.numel() for p in spec.module.parameters()) / 1e6, "inputs": ins,
            "output": "x".join(map(str, out.shape))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="export folders (default: a temporary folder)")
    ap.add_argument("--md", type=Path, default=HERE / "architectures.md")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    formats, precisions = args.formats.split(","), args.precisions.split(",")
    import transformers
    meta = {"date": datetime.date.today().isoformat(), "cpu": local_cpu_model() or platform.machine(), "cores": os.cpu_count(),
            "platform": f"{platform.system()} {platform.machine()}", "transformers": transformers.__version__,
            "torch": torch.__version__, "formats": formats, "precisions": precisions, "samples": args.samples}
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="architectures-") as tmp:
        work = args.work or Path(tmp)
        for name in names:
            print(f"{name}: exporting ...", flush=True)
            rep = _export(name, formats, precisions, args.samples, work)
            r = {"wall_s": rep["wall_s"]}
            try:
                r |= _describe(name)
            except Exception as e:  # noqa: BLE001 - the export's own error says the same
                r["describe_error"] = str(e)
            if "error" in rep:
                r["error"] = rep["error"]
            else:
                r["rows"] = [_row(a) for a in rep["artifacts"]]
            results[name] = r
            for row in r.get("rows", []):
                print(f"  {row['format']:10s} {row['precision']:4s} {row['status']:22s} cos={row['cosine']} "
                      f"{row['export_s']}s {row['reason'] or ''}"[:300], flush=True)
            if "error" in r:
                print(f"  failed: {r['error']}", flush=True)
    meta["total_s"] = time.perf_counter() - t0
    args.md.write_text(_markdown(results, meta))
    args.md.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {args.md} ({meta['total_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
