"""MODEL references, --input parsing and the errors a user gets for bad ones."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from edgeship.errors import EdgeshipError
from edgeship.model import InputSpec, ModelSpec, load, parse_input, split_call


def test_parse_input():
    assert parse_input("image:1x3x224x224") == InputSpec("image", (1, 3, 224, 224), "float32", "NCHW")
    assert parse_input("tokens:1x32:int64") == InputSpec("tokens", (1, 32), "int64")
    assert parse_input("x:2x4:fp16").dtype == "float16"


@pytest.mark.parametrize("text,fragment", [
    ("image", "NAME:SHAPE"), ("image:1xAx3", "cannot parse the shape"), ("image:1x0x3", "positive integer"),
    ("image:1x3:complex", "dtype 'complex'"), ("1bad:1x3", "not a valid identifier"), ("a:1:f32:0..1:extra", "NAME:SHAPE"),
    ("a:1:f32:extra", "cannot parse the range"),
])
def test_bad_input_specs(text, fragment):
    with pytest.raises(EdgeshipError, match=fragment):
        parse_input(text)


def _write(tmp_path, body: str):
    p = tmp_path / "user_model.py"
    p.write_text(textwrap.dedent(body))
    return p


def test_factory_forms(tmp_path):
    p = _write(tmp_path, """
        import torch
        from torch import nn
        def plain():
            return nn.Linear(4, 2)
        def with_inputs():
            return nn.Linear(4, 2), (torch.randn(1, 4),)
        class Net(nn.Module):
            def __init__(self):
                super().__init__(); self.fc = nn.Linear(4, 2)
            def forward(self, x): return self.fc(x)
        net = Net()
    """)
    spec = load(f"{p}:plain", [parse_input("x:1x4")])
    assert spec.inputs[0].name == "x" and spec.name == "plain"
    spec = load(f"{p}:with_inputs")
    assert spec.inputs == (InputSpec("input", (1, 4)),)
    assert load(f"{p}:Net", [parse_input("x:3x4")]).inputs[0].shape == (3, 4)
    assert load(f"{p}:net", [parse_input("x:1x4")]).module.training is False
    assert load("example:tiny_cnn").task == "image-classification"
    assert load("edgeship.examples:tiny_lstm").inputs[0].name == "sequence"


def test_model_errors(tmp_path):
    p = _write(tmp_path, """
        from torch import nn
        def not_a_module():
            return 42
        def needs_args(width):
            return nn.Linear(width, 2)
        def linear():
            return nn.Linear(4, 2)
    """)
    cases = [
        (f"{tmp_path}/missing.py:f", [], "does not exist"),
        (f"{p}:nope", [], "has no attribute 'nope'"),
        (f"{p}:not_a_module", [], "returned a int, not a torch.nn.Module"),
        (f"{p}:needs_args", [], "no required arguments"),
        (f"{p}:linear", [], "no example inputs"),
        ("example:nope", [], "known examples: .*tiny_cnn"),
        ("no_colon_here", [], "cannot read MODEL"),
        ("no_such_pkg_xyz.mod:attr", [], "cannot import module"),
    ]
    for ref, inputs, fragment in cases:
        with pytest.raises(EdgeshipError, match=fragment):
            load(ref, inputs)


def test_factory_keyword_arguments(tmp_path):
    p = _write(tmp_path, """
        from torch import nn
        def needs_args(width, bias=True):
            return nn.Linear(width, 2, bias=bias)
        net = nn.Linear(4, 2)
    """)
    assert split_call("example:digits_cnn(width=8)") == ("example:digits_cnn", {"width": 8})
    assert split_call(f"{p}:f(a=[1, 2], b='x', c=None)") == (f"{p}:f", {"a": [1, 2], "b": "x", "c": None})
    assert split_call("example:digits_cnn") == ("example:digits_cnn", {})
    spec = load("example:digits_cnn(width=8)")
    assert spec.module.classifier.in_features == 16 and spec.name == "digits_cnn"
    spec = load(f"{p}:needs_args(width=4, bias=False)", [parse_input("x:1x4")])
    assert spec.module.bias is None and spec.name == "needs_args"   # the name leaves the arguments out
    assert torch.equal(load("example:digits_cnn(width=8)").module.classifier.weight,
                       load("example:digits_cnn(width=8)").module.classifier.weight)   # still seeded
    for ref, fragment in [
        ("example:digits_cnn(8)", "must be keyword arguments"),
        ("example:digits_cnn(**kw)", "must be keyword arguments"),
        ("example:digits_cnn(width=os.cpu_count())", "value of width is not a Python literal"),
        ("example:digits_cnn(width=)", "cannot read the arguments"),
        ("example:digits_cnn(widht=8)", "unexpected keyword argument 'widht'"),
        (f"{p}:net(width=4)", "not a factory"),
    ]:
        with pytest.raises(EdgeshipError, match=fragment) as e:
            load(ref, [parse_input("x:1x4")])
        assert "keyword arguments" in e.value.hint


def test_shape_the_model_rejects_names_the_input(tmp_path):
    p = _write(tmp_path, "from torch import nn\ndef linear():\n    return nn.Linear(4, 2)\n")
    with pytest.raises(EdgeshipError, match=r"inputs x:1x5:float32") as e:
        load(f"{p}:linear", [parse_input("x:1x5")])
    assert "shape and dtype" in e.value.hint


def test_modelspec_rejects_non_module():
    with pytest.raises(EdgeshipError, match="not a torch.nn.Module"):
        ModelSpec("model", (InputSpec("x", (1,)),))


def test_example_inputs_are_seeded():
    spec = load("example:tiny_transformer")
    a, b = spec.example_inputs(3)[0], spec.example_inputs(3)[0]
    assert torch.equal(a, b) and a.dtype == torch.int64 and int(a.max()) < 1000
    assert not torch.equal(a, spec.example_inputs(4)[0])


HOSTILE = Path(__file__).parent / "reliability" / "data" / "hostile_models.py"


def test_every_random_source_is_seeded_before_the_factory():
    """A factory drawing weights from torch's global generator builds the same model for the same seed."""
    a, b, c = load(f"{HOSTILE}:unseeded"), load(f"{HOSTILE}:unseeded"), load(f"{HOSTILE}:unseeded", seed=1)
    wa, wb, wc = (list(s.module.state_dict().values()) for s in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert not all(torch.equal(x, y) for x, y in zip(wa, wc))


def test_a_plain_module_with_labelled_eval_data_gets_accuracy_in_every_runtime(tmp_path):
    """task 'generic' (what a user's factory gives): its first output is one row of scores the labels index, so
    every artifact still reports top-1 in its own runtime."""
    from dataclasses import replace

    from edgeship.compress.run import eval_split
    from edgeship.examples import digits_cnn
    from edgeship.pipeline import ExportOptions, run_export
    spec = replace(digits_cnn(), task="generic")
    report = run_export(spec, tmp_path / "out", ExportOptions(["onnx"], eval_data=eval_split("digits", spec)))
    acc = report["artifacts"][0]["accuracy"]
    assert acc["status"] == "ok" and acc["examples"] == 360 and acc["agreement_with_torch"] == 1.0


def test_an_input_layout_the_apps_cannot_preprocess_is_refused_before_any_export():
    """It was accepted at load and refused by the manifest schema after every format had been exported."""
    import json

    from edgeship.model import LAYOUTS
    with pytest.raises(EdgeshipError) as e:
        InputSpec("x", (1, 80, 200), layout="NCT")
    assert str(e.value).startswith("input 'x' has layout 'NCT', which the apps cannot preprocess")
    assert "layout=None" in e.value.hint
    assert InputSpec("x", (1, 80, 200)).layout is None
    schema = json.loads((Path(__file__).parents[1] / "toolchain/edgeship/schemas/manifest.schema.json").read_text())
    def layouts(node):   # the schema's layout enum, wherever it sits
        if isinstance(node, dict):
            if "layout" in node and isinstance(node["layout"], dict) and "enum" in node["layout"]:
                yield node["layout"]["enum"]
            for v in node.values():
                yield from layouts(v)
        elif isinstance(node, list):
            for v in node:
                yield from layouts(v)
    assert all(e == [*LAYOUTS, None] for e in layouts(schema)) and any(True for _ in layouts(schema))
