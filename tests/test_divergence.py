"""Divergence localization (issue 10): a real CNN converted to ONNX and OpenVINO, one middle Conv's weights altered
in each artifact, and the report must name that Conv as the first divergence, with its inputs agreeing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convcli.core.artifact import Artifact
from convcli.core.registry import default_registry
from convcli.core.tensors import parse_input_spec
from convcli.parity import divergence as divergence_mod
from convcli.parity.divergence import LocateRequest, locate
from tests.conftest import Cli
from tests.models.catalogue import HERE

MODEL = f"{HERE}/divergence_cnn.py:build"
INPUT = "x:1x3x16x16:float32"
ALTERED = "mid.conv.weight"  # the second of four Convs: node_conv2d_1 in the exported graph
FAST = ["--input", INPUT, "--threads", "2", "--no-latency", "--samples", "8"]


def _flip_first_filter(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[0] *= -1.0
    return out


def _alter_onnx(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    for i, t in enumerate(model.graph.initializer):
        if t.name == ALTERED:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(_flip_first_filter(numpy_helper.to_array(t)),
                                                                        t.name))
    onnx.save(model, str(dst))


def _alter_openvino(src: Path, dst: Path) -> None:
    from openvino import opset13

    from convcli.runners.openvino_runner import require_openvino

    ov = require_openvino()
    model = ov.Core().read_model(str(src))
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_friendly_name() == ALTERED:
            new = opset13.constant(_flip_first_filter(op.get_data()))
            new.set_friendly_name(ALTERED)
            for target in op.output(0).get_target_inputs():
                target.replace_source_output(new.output(0))
    ov.save_model(model, str(dst), compress_to_fp16=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The CNN converted once to ONNX and OpenVINO (no cache), plus an altered copy of each."""
    root = tmp_path_factory.mktemp("divergence")
    out = root / "out"
    res = Cli()("convert", MODEL, "--to", "onnx,openvino", "-o", out, "--no-cache", *FAST)
    assert res.exit_code == 0, res.output
    altered = root / "altered"
    altered.mkdir()
    _alter_onnx(out / "onnx-fp32" / "model.onnx", altered / "model.onnx")
    _alter_openvino(out / "openvino-fp32" / "model.xml", altered / "model.xml")
    return {"out": out, "report": json.loads((out / "report.json").read_text()), "altered": altered, "root": root}


def _row(outdir: Path) -> dict[str, Any]:
    rows = json.loads((outdir / "report.json").read_text())["artifacts"]
    assert len(rows) == 1
    return rows[0]


def _assert_names_the_altered_conv(d: dict[str, Any]) -> None:
    assert d["status"] == "found", d["message"]
    first = d["first"]
    assert first["node"] == "node_conv2d_1" and first["op"] == "Conv" and first["module"] == "mid.conv", first
    assert first["source_line"] and "divergence_cnn.py" in first["source_line"]
    assert first["rel_err"] > 0.1 and first["cosine"] < 0.99
    assert d["inputs"] and all(not e["diverged"] and e["rel_err"] < 1e-4 for e in d["inputs"]), d["inputs"]
    before = [e for e in d["path"] if e["index"] < first["index"]]
    assert before and not any(e["diverged"] for e in before)


def test_passing_rows_have_no_divergence(built: dict[str, Any]) -> None:
    rows = built["report"]["artifacts"]
    assert {r["id"] for r in rows} == {"onnx-fp32", "openvino-fp32"}
    assert all(r["status"] == "passed" and r.get("divergence") is None for r in rows)
    assert not any((built["out"] / r["id"] / "divergence").exists() for r in rows)


@pytest.mark.parametrize("artifact", ["model.onnx", "model.xml"])
def test_check_names_the_altered_conv(cli: Cli, built: dict[str, Any], tmp_path: Path, artifact: str) -> None:
    out = tmp_path / "check"
    res = cli("check", MODEL, built["altered"] / artifact, "-o", out, *FAST)
    assert res.exit_code == 1, res.output
    row = _row(out)
    assert row["status"] == "failed"
    d = row["divergence"]
    _assert_names_the_altered_conv(d)
    assert d["reference_values"].startswith("source (torch")
    assert "first divergence at Conv node_conv2d_1 (mid.conv)" in " ".join(res.output.split())
    # the repro: one node, its inputs and the reference outputs; from the altered ONNX it reproduces the drift
    files = {Path(f).name: out / f for f in d["files"]}
    assert set(files) >= {"subgraph.onnx", "inputs.npz", "expected.npz"}
    sub = onnx.load(str(files["subgraph.onnx"]))
    assert [n.op_type for n in sub.graph.node] == ["Conv"]
    if artifact == "model.onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(files["subgraph.onnx"]), providers=["CPUExecutionProvider"]).run(
            None, dict(np.load(files["inputs.npz"])))[0]
        assert np.abs(got - np.load(files["expected.npz"])["conv2d_1"]).max() > 1e-2


def test_debug_on_the_altered_artifact_and_on_a_passing_one(cli: Cli, built: dict[str, Any], tmp_path: Path) -> None:
    res = cli("debug", MODEL, built["altered"] / "model.onnx", "-o", tmp_path / "bad", *FAST[:-3])
    assert res.exit_code == 1, res.output
    _assert_names_the_altered_conv(_row(tmp_path / "bad")["divergence"])
    res = cli("debug", MODEL, built["out"] / "onnx-fp32" / "model.onnx", "-o", tmp_path / "good", *FAST[:-3])
    assert res.exit_code == 0, res.output
    d = _row(tmp_path / "good")["divergence"]
    assert d["status"] == "not_found" and d["compared"] >= 8 and d["first"] is None, d


def test_unmatchable_artifact_says_so_in_one_line(cli: Cli, built: dict[str, Any], tmp_path: Path) -> None:
    """Every tensor renamed and the exporter's metadata dropped, as in an ONNX file from another tool (ORT runs
    it positionally, so parity still runs and fails on the altered weights)."""
    model = onnx.load(str(built["altered"] / "model.onnx"))
    renames: dict[str, str] = {}
    for n in model.graph.node:
        del n.metadata_props[:]
        for i, o in enumerate(n.output):
            renames[o] = f"t{len(renames)}"
            n.output[i] = renames[o]
        for i, x in enumerate(n.input):
            n.input[i] = renames.get(x, x)
    for o in model.graph.output:
        o.name = renames.get(o.name, o.name)
    del model.graph.value_info[:]
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    res = cli("check", MODEL, path, "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 1, res.output
    d = _row(tmp_path / "out")["divergence"]
    assert d["status"] == "unmatched" and d["compared"] == 0, d
    assert d["message"].startswith("no intermediate tensor of the artifact could be matched")
    assert "\n" not in d["message"]
    assert d["unmatched"] >= 8 and d["unmatched_reasons"] == {"not in the reference graph": d["unmatched"]}


def test_run_fails_on_a_gate_and_localizes_without_changing_verdicts(cli: Cli, tmp_path: Path) -> None:
    """``convcli run``: a max_abs_err gate below fp32 noise fails both rows; localization runs automatically,
    finds no layer over the intermediate tolerance, and the report renders it (Markdown section, HTML plot)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
version: 1
source: {{model: "{MODEL}", inputs: ["{INPUT}"]}}
targets: [{{format: onnx}}, {{format: openvino}}]
data: {{samples: 8}}
latency: {{enabled: false, threads: 2}}
gates: {{max_abs_err: 1.0e-12}}
reports: [md, html, junit]
output: {tmp_path / "out"}
""")
    res = cli("run", recipe, "--no-cache")
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for row in report["artifacts"]:
        assert row["status"] == "failed" and row["failures"][0].startswith("max abs err"), row["failures"]
        d = row["divergence"]
        assert d["status"] == "not_found" and d["compared"] >= 8, d
    md = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "### Where parity fails" in md and "Where parity fails" in html and "error per layer" in html
    assert "divergence: no compared tensor exceeds" in (tmp_path / "out" / "report.junit.xml").read_text()


def test_bisection_narrows_to_the_same_node(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """With 3 tensors per round the 8-tensor graph needs several rounds; the answer must not change."""
    monkeypatch.setattr(divergence_mod, "MAX_PER_ROUND", 3)
    from tests.models.divergence_cnn import build

    inputs = [parse_input_spec(INPUT)]
    source = Artifact("pytorch", None, inputs, output_names=["output"], obj=build())
    artifact = Artifact("onnx", built["altered"] / "model.onnx", inputs, output_names=["output"])
    feed = {"x": np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)}
    reference = built["out"] / "onnx-fp32" / "model.onnx"
    d = locate(LocateRequest(default_registry(), source, artifact, reference, feed, [0, 1], 2, "fp32", 30.0))
    assert d.status == "found" and d.first is not None and d.first.node == "node_conv2d_1", d.message
    assert d.rounds >= 2


def test_a_failure_inside_localization_is_a_note(built: dict[str, Any], tmp_path: Path) -> None:
    inputs = [parse_input_spec(INPUT)]
    artifact = Artifact("onnx", built["altered"] / "model.onnx", inputs, output_names=["output"])
    missing = tmp_path / "gone.onnx"
    shutil.copy(built["altered"] / "model.onnx", missing)
    missing.write_bytes(b"not an onnx file")
    d = locate(LocateRequest(default_registry(), artifact, artifact, missing, {"x": np.zeros((1, 3, 16, 16),
                                                                                           np.float32)},
                             [0], 2, "fp32", 30.0))
    assert d.status == "error" and d.message.startswith("divergence localization failed")


def test_int8_qdq_tensors_are_compared_as_consumers_read_them(cli: Cli, built: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """ORT's QDQ quantizer drops the Relu after each Conv (the activation's quantization range clips instead), so
    the int8 graph's tensor named 'relu' holds the unclipped Conv output; the value compared must be its
    DequantizeLinear view, which is what the next Conv reads."""
    from convcli.runners.onnxruntime_runner import onnx_intermediates

    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(1).random((16, 3, 16, 16), dtype=np.float32))
    out = tmp_path / "q8"
    res = cli("convert", MODEL, "--to", "onnx:int8", "--calibration", calib, "-o", out, "--no-cache", *FAST)
    assert res.exit_code == 0, res.output
    int8 = out / "onnx-int8" / "model.onnx"
    assert [n.output[0] for n in onnx.load(str(int8)).graph.node if n.op_type == "Conv"][0] == "relu"
    reference = built["out"] / "onnx-fp32" / "model.onnx"
    feed = {"x": np.random.default_rng(2).random((2, 3, 16, 16), dtype=np.float32)}
    ref = onnx_intermediates(reference, feed, 2, ["relu"], None).by_reference()["relu"]
    got = onnx_intermediates(int8, feed, 2, ["relu"], reference)
    assert got.info[next(iter(got.tensors))].op == "Conv+QDQ"
    value = got.by_reference()["relu"]
    assert value.min() >= 0.0
    cos = float(np.dot(ref.ravel(), value.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(value)))
    assert cos > 0.99, cos


def test_convert_traces_a_pytorch_to_ncnn_row_against_an_exported_reference(tmp_path: Path) -> None:
    """pnnx's chain never passes through ONNX; when such a row fails parity, convert exports the source on demand
    (as check/debug do) instead of reporting the divergence unavailable."""
    import convcli

    report = convcli.convert(MODEL, [INPUT], "ncnn", output=tmp_path / "out", latency=False, samples=4,
                             gates={"max_abs_err": 1e-12})  # impossible on purpose: the row must fail parity
    row = report["ncnn-fp32"]
    assert row.status == "failed" and row.divergence is not None
    assert row.divergence.status in ("found", "not_found"), row.divergence.message
    assert row.divergence.compared > 0 and row.divergence.reference_graph


def test_the_simplified_onnx_keeps_only_the_metadata_localization_reads() -> None:
    from convcli.passes.simplify_onnx import _condensed

    trace = ('File "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1775, in _call_impl\n'
             '    return forward_call(*args, **kwargs)\n'
             'File "/home/me/models/net.py", line 17, in forward\n'
             '    return self.act(self.conv(x))\n'
             'File "/venv/lib/python3.11/site-packages/torch/nn/modules/conv.py", line 548, in forward\n'
             '    return self._conv_forward(input, self.weight, self.bias)\n')
    props = [onnx.StringStringEntryProto(key=k, value=v) for k, v in (
        ("pkg.torch.onnx.stack_trace", trace), ("pkg.torch.onnx.name_scopes", "['', 'mid', 'mid.conv']"),
        ("pkg.torch.onnx.fx_node", "%conv2d_1 : [num_users=1] = call_function[...]"))]
    kept = {p.key: p.value for p in _condensed(props)}
    assert set(kept) == {"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.name_scopes"}
    assert kept["pkg.torch.onnx.stack_trace"] == ('File "/home/me/models/net.py", line 17, in forward\n'
                                                  '    return self.act(self.conv(x))')
    assert props[0].value == trace  # the original graph's metadata is not modified


def test_a_whole_scale_mismatch_whose_consumers_agree_is_not_the_divergence(tmp_path: Path) -> None:
    """Inception's parallel branches have same-shaped outputs; ncnn's structural matching once paired them
    crosswise: each branch "differed" with cosine 0.3 while their Concat agreed. A divergence propagates."""
    from onnx import TensorProto, helper

    from convcli.core.intermediates import ReferenceGraph
    from convcli.parity.divergence import TensorError, contradicted

    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
         helper.make_node("Concat", ["a", "b"], ["c"], axis=1), helper.make_node("Neg", ["c"], ["d"])], "g",
        [info("x", TensorProto.FLOAT, [1, 4])], [info("d", TensorProto.FLOAT, [1, 8])])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    ref = ReferenceGraph(path)

    def err(name: str, rel: float) -> TensorError:
        return TensorError(tensor=name, rel_err=rel, diverged=rel > 1e-3)

    swapped = {"a": err("a", 0.99), "b": err("b", 0.99), "c": err("c", 0.0)}
    assert contradicted(ref, "a", swapped) and contradicted(ref, "b", swapped)
    real = {"a": err("a", 0.99), "c": err("c", 0.5)}
    assert not contradicted(ref, "a", real)  # it reached the Concat: a divergence
    assert not contradicted(ref, "a", {"a": err("a", 0.99)})  # nothing later compared: nothing contradicts it
    assert not contradicted(ref, "d", {"d": err("d", 0.99)})  # an output
    assert not contradicted(ref, "a", {"a": err("a", 0.01), "c": err("c", 0.0)})  # small drift may fade: kept
    chain = {"a": err("a", 0.99), "c": err("c", 0.98), "d": err("d", 0.0)}  # a mis-paired chain ending in agreement
    assert contradicted(ref, "a", chain) and contradicted(ref, "c", chain)
    drift = {"a": err("a", 0.99), "c": err("c", 1e-3)}  # the Concat drifts (fp32 winograd) but carries no whole-scale
    assert contradicted(ref, "a", drift)  # error: the branch's 0.99 never reached it


def _branches(scale: float, length: int = 4, altered: int = 2) -> onnx.ModelProto:
    """Two parallel chains of Muls (a1.., b1..) with their nodes interleaved in the graph, summed at the end.
    ``scale`` is the factor of a<altered>: 2.0 in the reference, something else in the altered copy."""
    from onnx import TensorProto, helper

    nodes, inits = [], []
    for i in range(1, length + 1):
        for branch, factor in (("a", scale if i == altered else 2.0), ("b", 3.0)):
            inits.append(numpy_helper.from_array(np.array(factor, np.float32), f"k_{branch}{i}"))
            prev = "x" if i == 1 else f"{branch}{i - 1}"
            nodes.append(helper.make_node("Mul", [prev, f"k_{branch}{i}"], [f"{branch}{i}"], name=f"mul_{branch}{i}"))
    nodes.append(helper.make_node("Add", [f"a{length}", f"b{length}"], ["y"], name="sum"))
    graph = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_bisection_follows_the_drifting_tensors_lineage_not_the_graph_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two interleaved chains of 8, a3 altered, 3 tensors per round. The first round compares a1, b3, b6 and the
    sum y: the b chain agrees and y drifts. Cutting the graph order at b6, the last agreeing tensor, left a7..y
    and named a6. Following y's lineage less what the agreeing tensors clear (a1, b1..b6) names a3. (Every
    altered position of chains of 4, 6 and 8 was checked this way; the old cut got a2..a5 of 8 wrong.)"""
    monkeypatch.setattr(divergence_mod, "MAX_PER_ROUND", 3)
    onnx.save(_branches(2.0, 8, 3), str(tmp_path / "reference.onnx"))
    onnx.save(_branches(2.5, 8, 3), str(tmp_path / "altered.onnx"))
    inputs = [parse_input_spec("x:2x4:float32")]
    source = Artifact("onnx", tmp_path / "reference.onnx", inputs, output_names=["y"])
    artifact = Artifact("onnx", tmp_path / "altered.onnx", inputs, output_names=["y"])
    feed = {"x": np.random.default_rng(0).random((2, 4), dtype=np.float32) + 0.5}
    d = locate(LocateRequest(default_registry(), source, artifact, tmp_path / "reference.onnx", feed, [0, 1], 2,
                             "fp32", 30.0))
    assert d.status == "found" and d.first is not None, d.message
    assert (d.first.tensor, d.first.node) == ("a3", "mul_a3"), d.message
    assert d.rounds >= 2
