"""Verification inputs are the model's inputs (#13.2): token ids over the embedding's rows, masks as 0/1 padding,
ranges from --input NAME:SHAPE:DTYPE:RANGE or the factory, and --task on the command line."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from edgeship.errors import EdgeshipError
from edgeship.model import InputSpec, ModelSpec, infer_input_ranges, load, padding_mask, parse_input, task_name

from test_cli import assert_clean_error, run

MODELS = '''
import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, BertModel


def tiny_bert_config():
    return BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)


class Bert(nn.Module):
    """A tiny BERT encoder with a 3-class head over [CLS]; type_vocab_size is BERT's default 2."""
    def __init__(self):
        super().__init__()
        self.bert = BertModel(tiny_bert_config(), add_pooling_layer=False)
        self.head = nn.Linear(32, 3)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        return self.head(h[:, 0])


class Tied(nn.Module):
    """int32 ids cast and reshaped before a functional lookup into a weight shared with the output layer."""
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(77, 8)
        self.out = nn.Linear(8, 77, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        x = F.embedding(ids.long().reshape(1, -1), self.out.weight)
        return self.out(x.mean(1))


class Gather(nn.Module):
    """An integer input that indexes a tensor without an embedding: no range can be read from the model."""
    def forward(self, x, idx):
        return torch.gather(x, 1, idx)


def plain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
'''


@pytest.fixture
def models(tmp_path):
    p = tmp_path / "models.py"
    p.write_text(textwrap.dedent(MODELS))
    return p


BERT_INPUTS = ["input_ids:2x16:int64", "attention_mask:2x16:int64", "token_type_ids:2x16:int64"]


# -- parsing and checking ranges ------------------------------------------------------------------------------
def test_parse_range_and_mask():
    assert parse_input("tokens:1x128:int64:0..30522") == InputSpec("tokens", (1, 128), "int64", low=0, high=30522)
    assert parse_input("m:1x8:i64:mask") == InputSpec("m", (1, 8), "int64", kind="mask")
    x = parse_input("x:2x4:float32:-1..1")
    assert (x.low, x.high) == (-1, 1)
    t = x.random(torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.min() >= -1 and t.max() < 1
    ids = parse_input("t:4x50:int64:5..8").random(torch.Generator().manual_seed(0))
    assert set(ids.unique().tolist()) == {5, 6, 7}   # HIGH is exclusive
    assert parse_input("t:1x4:int64:3..9").to_dict() == {"name": "t", "shape": [1, 4], "dtype": "int64", "layout": None,
                                                          "low": 3, "high": 9}


@pytest.mark.parametrize("text,message", [
    ("t:1x8:int64:5..5", "input 't' has the empty range 5..5: HIGH is exclusive, so it must be greater than LOW"),
    ("t:1x8:int64:9..2", "input 't' has the empty range 9..2: HIGH is exclusive, so it must be greater than LOW"),
    ("t:1x8:int64:0.5..3", "input 't' is int64, so its range needs integer bounds, got 0.5..3"),
    ("t:1x8:int64:0..", "cannot parse the range '0..' in --input 't:1x8:int64:0..'"),
    ("t:1x8:int64:1-5", "cannot parse the range '1-5' in --input 't:1x8:int64:1-5'"),
    ("t:1x8:uint8:-1..4", "input 't' is uint8, which holds 0..256 (HIGH exclusive); the range -1..4 does not fit"),
    ("t:1x8:bool:0..2", "input 't' is bool (0/1) and takes no range, got 0..2"),
    ("x:1x8:float32:0..inf", "input 'x': the range 0..inf must be finite"),
    ("t:1x8:int64:0..9:more", "cannot parse --input 't:1x8:int64:0..9:more'"),
])
def test_bad_ranges(text, message):
    with pytest.raises(EdgeshipError) as e:
        parse_input(text)
    assert e.value.message == message
    assert e.value.hint


def test_factory_ranges_are_checked_too():
    with pytest.raises(EdgeshipError, match="is a mask \\(0/1\\) and takes no range, got 0..5"):
        InputSpec("m", (1, 4), "int64", high=5, kind="mask")
    with pytest.raises(EdgeshipError, match="kind 'padding'"):
        InputSpec("m", (1, 4), "int64", kind="padding")


def test_padding_mask_is_ones_then_zeros():
    g = torch.Generator().manual_seed(0)
    for shape in [(16,), (4, 16), (2, 1, 1, 9)]:
        m = padding_mask(shape, g)
        assert m.shape == shape and set(m.unique().tolist()) <= {0, 1}
        rows = m.reshape(-1, shape[-1])
        lengths = rows.sum(-1)
        assert (lengths >= 1).all()
        assert torch.equal(rows, (torch.arange(shape[-1]) < lengths[:, None]).long())   # no 1 after a 0


# -- ranges read from the model -------------------------------------------------------------------------------
def test_ranges_from_the_embeddings_each_input_feeds(models):
    spec = load(f"{models}:Bert", [parse_input(t) for t in BERT_INPUTS])
    ids, mask, types = spec.inputs
    assert (ids.low, ids.high, ids.kind) == (0, 1000, None)          # word_embeddings rows
    assert (types.low, types.high, types.kind) == (0, 2, None)       # token_type_embeddings rows (type_vocab_size)
    assert mask.kind == "mask" and mask.range == (0, 2)
    xs = [spec.example_inputs(seed=s) for s in range(5)]
    all_ids = torch.cat([x[0].ravel() for x in xs])
    assert all_ids.max() >= 10 and all_ids.max() < 1000 and all_ids.min() >= 0
    assert len(all_ids.unique()) > 100
    masks = torch.cat([x[1] for x in xs])
    assert set(masks.unique().tolist()) == {0, 1} and (masks[:, 0] == 1).all()


def test_casts_views_and_tied_weights_are_followed(models):
    spec = load(f"{models}:Tied", [parse_input("ids:1x12:int32")])
    assert spec.inputs[0].range == (0, 77)


def test_integer_input_without_embedding_keeps_the_default(models):
    spec = load(f"{models}:Gather", [parse_input("x:2x10"), parse_input("idx:2x3:int64")])
    assert spec.inputs[1].range is None
    assert int(spec.example_inputs()[1].max()) <= 9
    given = load(f"{models}:Gather", [parse_input("x:2x10"), parse_input("idx:2x3:int64:0..10")])
    assert given.inputs[1].range == (0, 10)


def test_a_range_outside_the_embedding_is_refused(models):
    inputs = ["input_ids:2x16:int64:-1..1000", *BERT_INPUTS[1:]]
    with pytest.raises(EdgeshipError) as e:
        load(f"{models}:Bert", [parse_input(t) for t in inputs])
    assert e.value.message == ("input 'input_ids' feeds the embedding bert.embeddings.word_embeddings with 1000 rows, "
                               "so its values must lie in 0..1000 (HIGH exclusive); the range -1..1000 leaves it")
    assert e.value.hint == ("write --input input_ids:2x16:int64:0..1000, or leave RANGE out to use the embedding's")
    inputs = [BERT_INPUTS[0], BERT_INPUTS[1], "token_type_ids:2x16:int64:0..3"]
    with pytest.raises(EdgeshipError, match="token_type_embeddings with 2 rows"):
        load(f"{models}:Bert", [parse_input(t) for t in inputs])


def test_a_modelspec_that_names_its_ranges_keeps_them(models):
    module = torch.nn.Embedding(50, 4)
    spec = ModelSpec(module, (InputSpec("tokens", (1, 6), "int64", low=10, high=20),))
    assert infer_input_ranges(module, spec.inputs) == spec.inputs


def test_task_names():
    assert [task_name(t) for t in ("classify", "detect", "segment", "embed", "generic", "image-classification")] == [
        "classification", "detection", "segmentation", "embedding", "generic", "image-classification"]
    with pytest.raises(EdgeshipError) as e:
        task_name("regress")
    assert (e.value.message, e.value.hint) == ("unknown task 'regress'", "use one of classify, detect, segment, embed, generic")


def test_task_overrides_the_factory_and_reaches_the_manifest(models):
    from edgeship import manifest
    assert load("example:tiny_cnn", task="classify").task == "image-classification"   # the more specific name stays
    assert load("example:tiny_cnn", task="generic").task == "generic"
    for task, meaning in (("detect", "other"), ("segment", "logits"), ("embed", "embedding")):
        spec = load(f"{models}:plain", [parse_input("x:1x8")], task=task)
        m = manifest.build(spec, [], None)     # validated against the schema
        assert (m["task"], m["num_classes"], m["outputs"][0]["meaning"]) == (task_name(task), None, meaning)


# -- the command line -----------------------------------------------------------------------------------------
def _reference(out):
    with np.load(out / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def test_cli_bert_verification_inputs_are_real(models, tmp_path):
    out = tmp_path / "bert"
    r = run("export", f"{models}:Bert", *[a for t in BERT_INPUTS for a in ("--input", t)], "--formats", "onnx",
            "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    ref = _reference(out)
    ids, mask, types = ref["input__input_ids"], ref["input__attention_mask"], ref["input__token_type_ids"]
    assert ids.max() >= 10 and ids.max() < 1000 and (ids >= 10).mean() > 0.9
    assert set(np.unique(mask)) == {0, 1} and (mask == 0).any() and (mask[..., 0] == 1).all()
    assert set(np.unique(types)) == {0, 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(i["name"], i.get("low"), i.get("high"), i.get("kind")) for i in manifest["inputs"]] == [
        ("input_ids", 0, 1000, None), ("attention_mask", 0, 2, "mask"), ("token_type_ids", 0, 2, None)]
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"][0]["parity"]["status"] == "pass"


def test_cli_range_is_honored(models, tmp_path):
    out = tmp_path / "bert"
    inputs = ["input_ids:2x16:int64:100..120", "attention_mask:2x16:int64:mask", "token_type_ids:2x16:int64:0..1"]
    r = run("export", f"{models}:Bert", *[a for t in inputs for a in ("--input", t)], "--formats", "onnx",
            "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    ref = _reference(out)
    assert ref["input__input_ids"].min() >= 100 and ref["input__input_ids"].max() < 120
    assert (ref["input__token_type_ids"] == 0).all()
    assert json.loads((out / "manifest.json").read_text())["inputs"][0] == {
        "name": "input_ids", "shape": [2, 16], "dtype": "int64", "layout": None, "low": 100, "high": 120}


def test_cli_task_classify_gives_top1_agreement(models, tmp_path):
    tops = {}
    for task in (None, "classify"):
        out = tmp_path / f"plain-{task}"
        r = run("export", f"{models}:plain", "--input", "x:1x8", "--formats", "onnx", "--out", str(out),
                *(["--task", task] if task else []), cwd=tmp_path)
        assert r.returncode == 0, r.stderr + r.stdout
        report = json.loads((out / "report.json").read_text())
        tops[task] = report["artifacts"][0]["parity"]["top1_agreement"]
        manifest = json.loads((out / "manifest.json").read_text())
    assert tops == {None: None, "classify": 1.0}
    assert (manifest["task"], manifest["num_classes"]) == ("classification", 4)


@pytest.mark.parametrize("args,message", [
    (["--task", "regress"], "unknown task 'regress'"),
    (["--input", "x:1x8:int64:4..2"], "input 'x' has the empty range 4..2: HIGH is exclusive, so it must be greater "
                                      "than LOW"),
    (["--input", "x:1x8:int64:0.5..2"], "input 'x' is int64, so its range needs integer bounds, got 0.5..2"),
])
def test_cli_bad_task_and_range(models, tmp_path, args, message):
    r = run("export", f"{models}:plain", *args, "--out", "o", cwd=tmp_path)
    assert_clean_error(r, f"error: {message}")
    assert not (tmp_path / "o").exists()
