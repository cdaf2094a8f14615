"""`edgeship profile` from real parts: tiny_cnn exported by the committed pipeline (ONNX, TFLite, ExecuTorch fp32),
an int8 ONNX QDQ model made here with onnxruntime.quantization, an int8 and a portable-only .pte made here with the
plain ExecuTorch calls; each profiled by its runtime's own profiler (onnxruntime session profiling, ExecuTorch
ETDump + Inspector, the LiteRT interpreter's op list) through the device-side runner on the host, over a real sshd
on loopback and through the real adb client against the fake adbd.

LiteRT's per-op times come only from its native ``benchmark_model --enable_op_profiling=true``, which is not
installable here: its op-profiling output below is COMPOSED (not captured from a device) from the tool's source —
tensorflow/core/util/stats_calculator.cc (HeaderString/ColumnString: tab-separated, right-aligned fields
[node type] [first] [avg ms] [%] [cdf%] [mem KB] [times called] [Name]; avg per call, times called per run),
lite/profiling/profile_summarizer.cc ("Delegate internal:" block; delegate op rows named "Delegate/<op>:<n>") and
tools/benchmark (the "INFO: " prefix, "Inference timings in us" line). The binary is a STAND-IN script that checks
the flags it gets and prints that text; pushing it, chmod, running, parsing and merging with the real model's op
list are the real code.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgeship.bench.devices import AdbDevice, LocalDevice, SshDevice
from edgeship.bench.profile import (compare_profiles, compare_summary, compare_table, op_kind, profile_artifact,
                                    profile_summary, profile_table)
from edgeship.errors import EdgeshipError
from edgeship_runtime import profile as rprof
from support.adb import AdbLab, adb_lab  # noqa: F401  (fixture)
from support.sshd import SshServer, sshd  # noqa: F401  (fixture)

VENV_PY = sys.executable          # has onnxruntime, ai_edge_litert and executorch: the "device" python
ROW_KEYS = {"op", "name", "calls", "total_ms", "share", "where", "delegated", "dtype"}
CONV = ("conv",)                  # Conv, QLinearConv, CONV_2D, DEPTHWISE_CONV_2D, "Convolution IGEMM", aten::convolution

# benchmark_model --graph=model.tflite --enable_op_profiling=true --num_runs=20 --warmup_runs=3 --num_threads=2
# with the XNNPACK delegate profiling its own ops (composed: see the module docstring)
BM_XNNPACK = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [20]
INFO: Min runs duration (seconds): [0]
INFO: Num threads: [2]
INFO: Min warmup runs: [3]
INFO: Min warmup runs duration (seconds): [0]
INFO: Graph: [/tmp/edgeship-x/model/model.tflite]
INFO: Enable op profiling: [1]
INFO: #threads used for CPU inference: [2]
INFO: Loaded model /tmp/edgeship-x/model/model.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.071
INFO: Initialized session in 3.412ms.
INFO: Running benchmark for at least 3 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=3 first=412 curr=131 min=129 max=412 avg=224 std=133 p5=129 median=131 p95=412

INFO: Running benchmark for at least 20 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=20 first=128 curr=124 min=119 max=141 avg=125.5 std=5 p5=119 median=124 p95=141

INFO: Inference timings in us: Init: 3412, First inference: 412, Warmup (avg): 224, Inference (avg): 125.5
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=2.1 overall=2.6
INFO: Profiling Info for Benchmark Initialization:
============================== Run Order ==============================
\t             [node type]\t          [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t ModifyGraphWithDelegate\t            2.871\t    2.871\t 93.003%\t 93.003%\t     0.000\t        1\tModifyGraphWithDelegate/0
\t         AllocateTensors\t            0.212\t    0.108\t  6.997%\t100.000%\t     0.000\t        2\tAllocateTensors/0

Timings (microseconds): count=1 curr=3087
Memory (bytes): count=0
2 nodes observed



Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t          [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t   TfLiteXNNPackDelegate\t            0.118\t    0.101\t100.000%\t100.000%\t     0.000\t        1\t[StatefulPartitionedCall:0]:20

============================== Top by Computation Time ==============================
\t             [node type]\t          [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t   TfLiteXNNPackDelegate\t            0.118\t    0.101\t100.000%\t100.000%\t     0.000\t        1\t[StatefulPartitionedCall:0]:20

Number of nodes executed: 1
============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t   [cdf %]\t  [mem KB]\t[times called]
\t   TfLiteXNNPackDelegate\t        1\t     0.101\t   100.000%\t   100.000%\t     0.000\t        1

Timings (microseconds): count=20 first=118 curr=99 min=96 max=121 avg=101 std=6
Memory (bytes): count=0
1 nodes observed



Delegate internal: 
============================== Run Order ==============================
\t             [node type]\t          [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t     Transpose (ND, X32)\t            0.006\t    0.005\t  5.882%\t  5.882%\t     0.000\t        1\tDelegate/Transpose (ND, X32):0
\tConvolution (NHWC, F32) IGEMM\t            0.031\t    0.027\t 31.765%\t 37.647%\t     0.000\t        1\tDelegate/Convolution (NHWC, F32) IGEMM:1
\tConvolution (NHWC, F32) DWConv\t            0.016\t    0.013\t 15.294%\t 52.941%\t     0.000\t        1\tDelegate/Convolution (NHWC, F32) DWConv:2
\tFully Connected (NC, F32) GEMM\t            0.009\t    0.008\t  9.412%\t 62.353%\t     0.000\t        1\tDelegate/Fully Connected (NC, F32) GEMM:3
\tFully Connected (NC, F32) GEMM\t            0.007\t    0.006\t  7.059%\t 69.412%\t     0.000\t        1\tDelegate/Fully Connected (NC, F32) GEMM:4
\tConvolution (NHWC, F32) DWConv\t            0.005\t    0.004\t  4.706%\t 74.118%\t     0.000\t        1\tDelegate/Convolution (NHWC, F32) DWConv:5
\tFully Connected (NC, F32) GEMM\t            0.004\t    0.003\t  3.529%\t 77.647%\t     0.000\t        1\tDelegate/Fully Connected (NC, F32) GEMM:6
\tFully Connected (NC, F32) GEMM\t            0.005\t    0.005\t  5.882%\t 83.529%\t     0.000\t        1\tDelegate/Fully Connected (NC, F32) GEMM:7
\tConvolution (NHWC, F32) DWConv\t            0.006\t    0.005\t  5.882%\t 89.412%\t     0.000\t        1\tDelegate/Convolution (NHWC, F32) DWConv:8
\tFully Connected (NC, F32) GEMM\t            0.005\t    0.004\t  4.706%\t 94.118%\t     0.000\t        1\tDelegate/Fully Connected (NC, F32) GEMM:9
\t                Add (ND)\t            0.002\t    0.001\t  1.176%\t 95.294%\t     0.000\t        1\tDelegate/Add (ND):10
\t       Mean (ND) Reduce2\t            0.002\t    0.002\t  2.353%\t 97.647%\t     0.000\t        1\tDelegate/Mean (ND) Reduce2:11
\tFully Connected (NC, F32) GEMM\t            0.002\t    0.002\t  2.353%\t100.000%\t     0.000\t        1\tDelegate/Fully Connected (NC, F32) GEMM:12

Number of nodes executed: 13
Timings (microseconds): count=20 first=102 curr=84 min=81 max=104 avg=85 std=5
Memory (bytes): count=0
13 nodes observed
"""

# the same tool with --use_xnnpack=false (builtin kernels; ADD called twice per run), lines as the tool prints them
BM_BUILTIN = """\
INFO: Inference timings in us: Init: 2210, First inference: 1504, Warmup (avg): 1103.5, Inference (avg): 840
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t          [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t                 CONV_2D\t            0.530\t    0.412\t 56.516%\t 56.516%\t     0.000\t        1\t[sequential/conv2d/Relu;sequential/conv2d/BiasAdd]:0
\t       DEPTHWISE_CONV_2D\t            0.240\t    0.198\t 27.160%\t 83.676%\t     0.000\t        1\t[sequential/dw/Relu]:1
\t                     ADD\t            0.030\t    0.021\t  5.761%\t 89.437%\t     0.000\t        2\t[sequential/add]:2
\t         FULLY_CONNECTED\t            0.090\t    0.077\t 10.562%\t100.000%\t     0.000\t        1\t[StatefulPartitionedCall:0]:3

Timings (microseconds): count=20 first=890 curr=731 min=720 max=802 avg=729 std=18
"""

# ------------------------------------------------------------------------------------------ artifacts, once

@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """format -> tiny_cnn exported by the committed pipeline at fp32 (made on first use)."""
    from edgeship.examples import tiny_cnn
    from edgeship.pipeline import export_artifact

    out = tmp_path_factory.mktemp("profile-exports")
    spec, made = tiny_cnn(), {}

    def get(fmt: str) -> Path:
        if fmt not in made:
            exported, _ = export_artifact(spec, fmt, "fp32", out)
            made[fmt] = Path(exported.path)
        return made[fmt]
    return get


@pytest.fixture(scope="module")
def onnx_int8(artifact, tmp_path_factory) -> Path:
    """The tiny CNN's ONNX file quantized to QDQ int8 with onnxruntime's static quantizer (per-channel)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    d = tmp_path_factory.mktemp("onnx-int8")
    quant_pre_process(str(artifact("onnx")), str(d / "pre.onnx"))
    quantize_static(str(d / "pre.onnx"), str(d / "model.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    return d / "model.int8.onnx"


def _render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def _check_timed(r: dict, runs: int) -> None:
    """The shape every runtime's result has, and figures that hold together."""
    assert r["runs"] == runs and r["total_ms"] > 0 and r["ops"]
    for o in r["ops"]:
        assert ROW_KEYS <= set(o), o
        assert o["total_ms"] is not None and o["total_ms"] >= 0 and o["calls"] >= 1
    assert sum(o["share"] for o in r["ops"]) == pytest.approx(100.0, abs=5.0)
    assert sum(o["total_ms"] for o in r["ops"]) == pytest.approx(r["op_total_ms"], rel=1e-3, abs=1e-6)
    # the op events lie inside the runs the runtime timed (warmup runs left out): their sum cannot exceed them
    assert 0 < r["op_total_ms"] <= r["total_ms"] * 1.05
    assert r["coverage"] == pytest.approx(r["op_total_ms"] / r["total_ms"], rel=1e-2)
    assert any(any(c in o["op"].lower() for c in CONV) for o in r["ops"]), [o["op"] for o in r["ops"]]


# ------------------------------------------------------------------------------------------ onnxruntime

@pytest.mark.slow
def test_onnx_fp32_on_local(artifact):
    """Through the runner on the host: node events of the last `runs` model_run events, one call per node."""
    r = profile_artifact(artifact("onnx"), LocalDevice(), runs=12, warmup=3, threads=1)
    assert (r["runtime"], r["format"], r["device"], r["threads"]) == ("onnxruntime", "onnx", "local", 1)
    assert r["model"] == str(artifact("onnx"))
    _check_timed(r, 12)
    assert all(o["calls"] == 1 for o in r["ops"])           # 3 warm-up runs leaking in would make calls 15/12
    assert {o["where"] for o in r["ops"]} == {"CPUExecutionProvider"}
    convs = [o for o in r["ops"] if o["op"] == "Conv"]
    assert convs and all(o["dtype"] == "float32" for o in convs)
    assert r["quantized"] is False and r["float_ops_in_quantized"] == [] and r["not_delegated"] == []
    text = _render(profile_table(r))
    assert "share %" in text and "Conv" in text and "CPUExecutionProvider" in text
    shown = [ln.split("│")[2].strip() for ln in text.splitlines() if ln.startswith("│")]
    assert shown == [o["name"] for o in sorted(r["ops"], key=lambda o: -o["total_ms"])]   # slowest first
    short = _render(profile_table(r, top=3))
    assert f"… {len(r['ops']) - 3} more" in short


@pytest.mark.slow
def test_onnx_int8_qdq_lists_float_ops(onnx_int8):
    r = rprof.profile(onnx_int8, runs=8, warmup=2, threads=1)
    _check_timed(r, 8)
    assert r["quantized"] is True
    ops = {o["op"] for o in r["ops"]}
    assert "QLinearConv" in ops                               # ORT fused the Q/DQ around convs into int8 kernels
    assert all(o["dtype"] in ("uint8", "int8") for o in r["ops"] if o["op"] == "QLinearConv")
    floats = r["float_ops_in_quantized"]
    kinds = {f["op"]: f["kind"] for f in floats}
    assert kinds.get("QuantizeLinear") == "quantize" and kinds.get("DequantizeLinear") == "dequantize"
    for f in floats:   # every entry is a Q/DQ op or an op whose input really is float
        assert f["kind"] in ("quantize", "dequantize") or f["dtype"] == "float32", f
    names = {f["name"] for f in floats}
    assert not any(o["name"] in names for o in r["ops"] if o["op"] == "QLinearConv")
    lines = profile_summary(r)
    assert lines[0].startswith("float inside this int8 model:")
    assert any("QuantizeLinear" in ln and "DequantizeLinear" in ln for ln in lines)


def test_parse_ort_trace_keeps_only_the_last_runs():
    """Two runs of two nodes; the first (a warm-up) is left out; a node event outside every run is ignored."""
    ev = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
          {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 40, "args": {"op_name": "Conv", "provider": "CPUExecutionProvider", "input_type_shape": [{"float": [1]}]}},
          {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
          {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 30, "args": {"op_name": "Conv", "provider": "CPUExecutionProvider", "input_type_shape": [{"float": [1]}]}},
          {"cat": "Node", "name": "b_kernel_time", "ts": 250, "dur": 20, "args": {"op_name": "QLinearConv", "provider": "CPUExecutionProvider", "input_type_shape": [{"uint8": [1]}]}},
          {"cat": "Node", "name": "b_kernel_time", "ts": 260, "dur": 5, "args": {"op_name": "QLinearConv", "provider": "CPUExecutionProvider"}},
          {"cat": "Node", "name": "c_kernel_time", "ts": 400, "dur": 7, "args": {"op_name": "Add"}}]
    rows, total, n = rprof.parse_ort_trace(ev, runs=1)
    assert n == 1 and total == pytest.approx(0.1)
    assert [(r["name"], r["op"], r["calls"], r["dtype"]) for r in rows] == [("a", "Conv", 1, "float32"), ("b", "QLinearConv", 2, "uint8")]
    assert [r["total_ms"] for r in rows] == pytest.approx([0.03, 0.025])
    with pytest.raises(ValueError, match="model_run"):
        rprof.parse_ort_trace(ev[1:2], runs=1)


# ------------------------------------------------------------------------------------------ ExecuTorch

@pytest.mark.slow
def test_executorch_fp32_on_local(artifact):
    """ETDump + Inspector: XNNPACK's own op events inside the delegate call; the whole CNN is delegated."""
    r = profile_artifact(artifact("executorch"), LocalDevice(), runs=10, warmup=2, threads=1)
    assert r["runtime"] == "executorch" and "ETDump" in r["profiler"]
    _check_timed(r, 10)
    assert all(o["calls"] == 1 and o["delegated"] is True and o["where"] == "XnnpackBackend" for o in r["ops"])
    assert all(o["name"].startswith("XnnpackBackend[0]/") for o in r["ops"])
    convs = [o for o in r["ops"] if o["op"].startswith("Convolution")]
    assert convs and all(o["dtype"] == "float32" for o in convs)
    assert r["delegate_overhead_ms"] is not None and r["delegate_overhead_ms"] >= 0
    assert r["op_total_ms"] + r["delegate_overhead_ms"] <= r["total_ms"] * 1.05
    assert r["quantized"] is False and r["not_delegated"] == []


@pytest.mark.slow
def test_executorch_portable_and_int8(artifact, tmp_path):
    """A .pte lowered without a partitioner (every op on the portable kernels: names and dtypes from the
    program's execution plan) and an int8 .pte (XNNPACKQuantizer, per-channel): QC8/QS8 ops and the Convert
    ops at the float boundary."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeship.examples import tiny_cnn
    spec = tiny_cnn()
    module, args = spec.module.eval(), spec.example_inputs()
    portable = tmp_path / "portable.pte"
    portable.write_bytes(to_edge_transform_and_lower(torch.export.export(module, args)).to_executorch().buffer)
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    gm = prepare_pt2e(torch.export.export(module, args).module(), q)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        gm(torch.randn(1, 3, 32, 32, generator=gen))
    lowered = to_edge_transform_and_lower(torch.export.export(convert_pt2e(gm), args), partitioner=[XnnpackPartitioner()],
                                          generate_etrecord=True).to_executorch()
    int8, etrecord = tmp_path / "model.int8.pte", tmp_path / "model.int8.etrecord"
    int8.write_bytes(lowered.buffer)
    lowered.get_etrecord().save(str(etrecord))

    r = rprof.profile(portable, runs=5, warmup=1, threads=1)
    _check_timed(r, 5)
    assert all(o["where"] == "portable" and o["delegated"] is False for o in r["ops"])
    assert any(o["op"] == "aten::convolution" and o["dtype"] == "float32" for o in r["ops"])
    assert all(o["op"].startswith("aten::") for o in r["ops"])      # named from the execution plan
    assert r["not_delegated"] == [] and r["quantized"] is False      # no delegate: nothing "left out" of one

    r = rprof.profile(int8, runs=5, warmup=1, threads=1, etrecord=etrecord)
    _check_timed(r, 5)
    assert r["quantized"] is True
    (d,) = r["delegates"]                                   # one XNNPACK delegate; the ETRecord names its aten ops
    assert d["name"] == "XnnpackBackend[0]" and d["ops"] == len(r["ops"]) and d["ops_ms"] <= d["total_ms"]
    assert d["source_ops"].get("aten.convolution.default", 0) >= 10
    assert any(ln.startswith("delegate XnnpackBackend[0]:") and "aten.convolution.default" in ln for ln in profile_summary(r))
    assert any(o["op"].startswith("Convolution") and o["dtype"] == "int8" for o in r["ops"])
    assert [f["kind"] for f in r["float_ops_in_quantized"]].count("convert") >= 2
    assert not any(f["kind"] == "float" for f in r["float_ops_in_quantized"])


def test_xnnpack_names():
    assert rprof.xnnpack_op("Convolution (NHWC, F32) IGEMM #3") == ("Convolution IGEMM", "float32")
    assert rprof.xnnpack_op("Fully Connected (NC, QS8, QC8W) GEMM #1") == ("Fully Connected GEMM", "int8")
    assert rprof.xnnpack_op("Fully Connected (NC, QD8, F32, QC8W) GEMM") == ("Fully Connected GEMM", "int8")
    assert rprof.xnnpack_op("Convert (NC, F32, QD8) #1") == ("Convert", "float32")
    assert rprof.xnnpack_op("Add (ND) #1") == ("Add", None)
    assert rprof.xnnpack_op("Transpose (ND, X8)") == ("Transpose", "8-bit")
    assert rprof.qdq_kind("Convert") == "convert" and rprof.qdq_kind("Conv") is None


# ------------------------------------------------------------------------------------------ LiteRT

@pytest.mark.slow
def test_tflite_op_list_on_local(artifact):
    """No per-op timing in LiteRT's Python API: the op list with dtypes and delegation, the whole-model time,
    and a note that says what gives per-op times."""
    r = profile_artifact(artifact("tflite"), LocalDevice(), runs=10, warmup=2, threads=1)
    assert r["runtime"] == "litert" and r["total_ms"] > 0 and r["op_total_ms"] is None
    ops = [o["op"] for o in r["ops"]]
    assert "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops
    assert all(o["total_ms"] is None and o["share"] is None for o in r["ops"])
    assert all(o["delegated"] is True and o["where"] == "XNNPACK delegate" and o["dtype"] == "float32" for o in r["ops"])
    assert any("benchmark_model" in n and "--enable_op_profiling=true" in n for n in r["notes"])
    assert any(f"{len(ops)} of {len(ops)} ops run inside 1 XNNPACK delegate" in n for n in r["notes"])
    text = _render(profile_table(r))
    assert "CONV_2D" in text and "—" in text


def _stand_in_benchmark_model(path: Path, log: Path) -> Path:
    """A STAND-IN for LiteRT's benchmark_model (none is installable here): checks the op-profiling flags, logs its
    argv and prints the composed output above."""
    sample = path.with_suffix(".txt")
    sample.write_text(BM_XNNPACK)
    path.write_text(f"""#!/bin/sh
echo "$@" > {log}
case " $* " in *" --enable_op_profiling=true "*) ;; *) echo "ERROR: no op profiling" >&2; exit 1;; esac
for a in "$@"; do case "$a" in --graph=*) [ -f "${{a#--graph=}}" ] || {{ echo "ERROR: no graph" >&2; exit 1; }};; esac; done
cat {sample}
""")
    path.chmod(0o755)
    return path


@pytest.mark.slow
def test_tflite_benchmark_model_via_runner(artifact, tmp_path):
    """--benchmark-model: the runner runs the tool, the delegate node row gives way to XNNPACK's own op rows."""
    log = tmp_path / "argv.txt"
    bm = _stand_in_benchmark_model(tmp_path / "benchmark_model", log)
    r = profile_artifact(artifact("tflite"), LocalDevice(), runs=20, warmup=3, threads=2, benchmark_model=str(bm))
    argv = log.read_text().split()
    assert {"--enable_op_profiling=true", "--num_runs=20", "--warmup_runs=3", "--num_threads=2", "--min_secs=0"} <= set(argv)
    assert r["total_ms"] == pytest.approx(0.1255)                      # Inference (avg): 125.5 us
    _check_timed(r, 20)
    assert len(r["ops"]) == 13 and not any("TfLiteXNNPackDelegate" in o["op"] for o in r["ops"])
    assert r["ops"][1]["op"] == "Convolution IGEMM" and r["ops"][1]["total_ms"] == pytest.approx(0.027)
    assert r["ops"][1]["share"] == pytest.approx(100 * 0.027 / 0.085, abs=0.01)
    assert all(o["where"] == "XNNPACK delegate" and o["delegated"] for o in r["ops"])
    assert any("overhead" in n and "0.0160" in n for n in r["notes"])    # 0.101 delegate - 0.085 inside


def test_parse_benchmark_model_builtin_and_errors():
    p = rprof.parse_benchmark_model(BM_BUILTIN)
    assert p["delegate_ops"] == [] and p["total_ms"] == pytest.approx(0.840)
    assert [(o["type"], o["node_index"], o["calls"]) for o in p["ops"]] == [
        ("CONV_2D", 0, 1), ("DEPTHWISE_CONV_2D", 1, 1), ("ADD", 2, 2), ("FULLY_CONNECTED", 3, 1)]
    assert p["ops"][2]["total_ms"] == pytest.approx(2 * 0.021)          # avg per call × calls per run
    rows, notes = rprof.litert_rows(None, p)
    result = rprof.finish({"total_ms": p["total_ms"], "ops": rows, "notes": notes})
    assert sum(o["share"] for o in result["ops"]) == pytest.approx(100.0, abs=0.01)
    assert result["op_total_ms"] == pytest.approx(0.412 + 0.198 + 0.042 + 0.077)
    with pytest.raises(ValueError, match="enable_op_profiling"):
        rprof.parse_benchmark_model("INFO: STARTING!\nINFO: Inference timings in us: Init: 1, First inference: 2")


# ------------------------------------------------------------------------------------------ transports

@pytest.mark.slow
def test_over_ssh(artifact, sshd: SshServer):
    """The same runner over a real ssh connection (loopback sshd); the board's python is the project venv's."""
    dev = SshDevice(sshd.url(), ssh_config=sshd.config, python=VENV_PY)
    r = profile_artifact(artifact("onnx"), dev, runs=5, warmup=1, threads=1)
    assert r["device"] == sshd.url() and r["runtime"] == "onnxruntime"
    _check_timed(r, 5)


@pytest.mark.slow
def test_over_adb(artifact, adb_lab: AdbLab, tmp_path):
    """Through the real adb client and the fake adbd: the Python runner on a device that has python, and the
    pushed benchmark_model (the stand-in) on one that has none."""
    fake, _ = adb_lab.add_device()
    dev = AdbDevice(fake.serial, adb=adb_lab.adb, server_port=adb_lab.port, python=VENV_PY)
    r = profile_artifact(artifact("onnx"), dev, runs=5, warmup=1)
    assert r["device"] == f"adb:{fake.serial}"
    _check_timed(r, 5)

    phone = AdbDevice(fake.serial, adb=adb_lab.adb, server_port=adb_lab.port)
    log = tmp_path / "argv.txt"
    bm = _stand_in_benchmark_model(tmp_path / "benchmark_model", log)
    r = profile_artifact(artifact("tflite"), phone, runs=20, warmup=3, tool=bm)
    assert "--enable_op_profiling=true" in log.read_text()
    assert r["device"] == f"adb:{fake.serial}" and r["runtime"] == "litert"
    _check_timed(r, 20)
    assert any("this host's LiteRT" in n for n in r["notes"])


# ------------------------------------------------------------------------------------------ errors

def test_errors(tmp_path):
    dev = LocalDevice()
    with pytest.raises(EdgeshipError, match="does not exist"):
        profile_artifact(tmp_path / "nope.onnx", dev)
    (tmp_path / "m.mlpackage").mkdir()
    with pytest.raises(EdgeshipError, match="no per-op profiler for coreml"):
        profile_artifact(tmp_path / "m.mlpackage", dev)
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(EdgeshipError, match="cannot tell the format"):
        profile_artifact(tmp_path / "m.bin", dev)
    (tmp_path / "m.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(EdgeshipError, match="--runs"):
        profile_artifact(tmp_path / "m.onnx", dev, runs=0)
    with pytest.raises(EdgeshipError, match="--tool profiles .tflite"):
        profile_artifact(tmp_path / "m.onnx", dev, tool=tmp_path / "m.bin")
    with pytest.raises(EdgeshipError, match=r"profiling m.onnx on local failed: .*(?i:protobuf|invalid|load)"):
        profile_artifact(tmp_path / "m.onnx", dev)   # the real onnxruntime refuses it on the "device"


def test_runner_cli_prints_one_json_error(tmp_path, capsys):
    assert rprof.main([str(tmp_path / "missing.tflite")]) == 2
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["error"].startswith("FileNotFoundError")
    assert rprof.main(["--runs", "x"]) == 2
    assert "usage error" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


# ------------------------------------------------------------------------------------------ int8 against fp32

def test_op_kind_pairs_float_and_quantized_ops():
    assert op_kind("QLinearConv") == op_kind("FusedConv") == op_kind("Conv") == "Conv"
    assert op_kind("QGemm") == op_kind("Gemm") == op_kind("QLinearMatMul") == "MatMul/Gemm"
    assert op_kind("MatMulInteger") == op_kind("MatMulIntegerToFloat") == op_kind("MatMul") == "MatMul/Gemm"
    assert op_kind("QLinearAdd") == "Add"
    for qdq in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Convert", "QUANTIZE"):
        assert op_kind(qdq) == "quantize/dequantize"
    assert op_kind("Fully Connected GEMM") == "Fully Connected GEMM"


@pytest.mark.slow
def test_compare_int8_with_fp32_in_onnxruntime(artifact, onnx_int8):
    """Both profiled for real: per op kind the two times line up, and the totals give the speed-up."""
    dev = LocalDevice()
    fp32 = profile_artifact(artifact("onnx"), dev, runs=10, warmup=2, threads=1)
    int8 = profile_artifact(onnx_int8, dev, runs=10, warmup=2, threads=1)
    cmp = compare_profiles(int8, fp32)
    assert cmp["speedup"] == pytest.approx(fp32["total_ms"] / int8["total_ms"])
    conv = next(r for r in cmp["rows"] if r["kind"] == "Conv")
    assert conv["baseline_ms"] > 0 and conv["this_ms"] > 0
    assert conv["speedup"] == pytest.approx(conv["baseline_ms"] / conv["this_ms"])
    assert "float32" in conv["baseline_dtypes"] and set(conv["this_dtypes"]) & {"uint8", "int8"}
    qdq = next(r for r in cmp["rows"] if r["kind"] == "quantize/dequantize")
    assert qdq["baseline_ms"] == 0.0 and qdq["this_ms"] > 0 and qdq["speedup"] is None
    # every op's time is in exactly one row, on each side
    assert sum(r["this_ms"] for r in cmp["rows"]) == pytest.approx(int8["op_total_ms"], rel=1e-6)
    assert sum(r["baseline_ms"] for r in cmp["rows"]) == pytest.approx(fp32["op_total_ms"], rel=1e-6)
    text = _render(compare_table(cmp))
    assert "Conv" in text and "model.int8.onnx ms" in text and "speed-up" in text
    lines = compare_summary(cmp)
    assert lines[0].startswith("whole inference:")
    assert any("quantize/dequantize" in ln for ln in lines)
    if cmp["cpu_features"]["int8_dot"] is False:   # this host (AVX2 without VNNI) says why int8 gains little
        assert any(ln.startswith("int8 dot-product instructions: none") for ln in lines)


def test_compare_refuses_two_runtimes():
    with pytest.raises(EdgeshipError, match="two models of one runtime"):
        compare_profiles({"runtime": "onnxruntime", "model": "a.onnx"}, {"runtime": "executorch", "model": "b.pte"})


def test_cpu_features_reads_x86_and_arm_flags(tmp_path):
    from edgeship_runtime.bench import cpu_features
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx fma avx2 f16c\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    f = cpu_features(str(x86))
    assert f["flags"] == ["sse4_2", "avx", "fma", "avx2", "f16c"] and f["int8_dot"] is False
    vnni = tmp_path / "vnni"
    vnni.write_text("flags\t\t: avx2 avx512f avx512_vnni\n")
    assert cpu_features(str(vnni))["int8_dot_flags"] == ["avx512_vnni"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp i8mm\n")
    assert cpu_features(str(arm))["int8_dot_flags"] == ["asimddp", "i8mm"]
    assert cpu_features(str(tmp_path / "missing")) == {"flags": [], "int8_dot": None, "source": None}
