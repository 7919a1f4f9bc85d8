"""Transformer families built from ``transformers`` configurations (recipes/models/hf_transformers.py), at their
tiny sizes: what each target does with a token model's dynamic batch and sequence.

Every conversion is real; the TFLite one runs onnx2tf in a child (~15 s), the others take seconds.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.models.catalogue import ROOT

MODELS = ROOT / "recipes/models/hf_transformers.py"
NO_LATENCY = ["--no-latency", "--threads", "2", "--samples", "4"]
HIDDEN = ["--output-kind", "last_hidden_state:embedding"]


def _token_inputs(batch: int, seq: int) -> list[str]:
    return ["--input", f"input_ids:batch={batch}xseq={seq}:int64:0..1000",
            "--input", f"attention_mask:batch={batch}xseq={seq}:int64:0..2"]


def test_model_declares_its_own_inputs_and_outputs(cli, tmp_path: Path) -> None:
    """No --input: the factory's model carries CONVCLI_INPUTS (ids within its own vocabulary) and output names."""
    out = tmp_path / "out"
    res = cli("convert", f"{MODELS}:tiny_bert", "--to", "onnx", "-o", out, *NO_LATENCY, *HIDDEN)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert report["source"]["inputs"] == ["input_ids:batch=2xseq=16:int64:0..1000",
                                          "attention_mask:batch=2xseq=16:int64:0..2"]
    assert report["source"]["outputs"] == ["last_hidden_state"]
    (row,) = report["artifacts"]
    assert row["status"] == "passed", row
    (output,) = row["parity"]["outputs"]
    assert output["kind"] == "embedding" and output["shape"] == [4, 16, 64]
    assert not output["degenerate"], output  # random weights, but LayerNorm keeps the hidden states at std ~1


def test_token_model_to_tflite_fixes_and_records_dynamic_dims(cli, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "out"
    res = cli("convert", f"{MODELS}:tiny_bert", "--to", "tflite", "-o", out, *NO_LATENCY, *HIDDEN)
    assert res.exit_code == 0, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "passed", row
    assert row["parity"]["max_abs_err"] < 1e-4 and row["parity"]["cosine_min"] > 0.9999
    fixed = {"input_ids": {"batch": 1, "seq": 16}, "attention_mask": {"batch": 1, "seq": 16}}
    assert row["details"]["fixed shapes"] == fixed
    it = Interpreter(model_path=str(out / row["path"]))
    assert sorted([int(x) for x in d["shape"]] for d in it.get_input_details()) == [[1, 16], [1, 16]]
    # the user sees it without opening report.json: terminal and Markdown name the fixed sizes
    shown = "tflite-fp32: input_ids batch=1 seq=16, attention_mask batch=1 seq=16"
    assert shown in " ".join(res.output.split())
    md = cli("report", out, "--format", "md")
    assert md.exit_code == 0 and "Dynamic dims fixed" in md.output and shown in md.output.replace("\\", "")


def test_token_model_to_onnx_and_openvino_keeps_batch_and_seq_dynamic(cli, tmp_path: Path) -> None:
    """Built at seq 16, checked again at batch 3, seq 24: the same files run any size."""
    out = tmp_path / "out"
    res = cli("convert", f"{MODELS}:tiny_bert", "--to", "onnx,openvino", "-o", out, *NO_LATENCY, *HIDDEN)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = {r["id"]: r for r in report["artifacts"]}
    assert all(r["status"] == "passed" for r in rows.values()), rows
    assert all("fixed shapes" not in r["details"] for r in rows.values())
    graph = onnx.load(str(out / rows["onnx-fp32"]["path"])).graph
    assert {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input} == \
        {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    export = next(s for s in report["steps"] if s["name"] == "OnnxFromPytorch")
    assert export["details"]["export_checks"]["batch=3, seq=17"]["passed"]

    check_out = tmp_path / "check"
    res = cli("check", f"{MODELS}:tiny_bert", out / rows["onnx-fp32"]["path"], out / rows["openvino-fp32"]["path"],
              *_token_inputs(3, 24), "-o", check_out, *NO_LATENCY, *HIDDEN)
    assert res.exit_code == 0, res.output
    checked = res.report(check_out)["artifacts"]
    assert len(checked) == 2 and all(r["status"] == "passed" for r in checked), checked
    assert all(r["parity"]["outputs"][0]["shape"] == [4, 24, 64] for r in checked)


def test_bert_family_to_ncnn_names_the_integer_operators(cli, tmp_path: Path) -> None:
    """ncnn computes float tensors only: the position / token-type ids and the attention mask that BERT builds
    from integer tensors at run time have no ncnn layer, on the TorchScript and on the ONNX route."""
    out = tmp_path / "out"
    res = cli("convert", f"{MODELS}:tiny_bert", "--to", "ncnn", "-o", out, *NO_LATENCY)
    assert res.exit_code == 3, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "error"
    assert "pnnx could not map operator(s)" in row["error"]
    assert "torch.arange" in row["error"] and "torch.gather" in row["error"], row["error"]
    assert "the ONNX route (OnnxFromPytorch + pnnx) failed too" in row["error"]


@pytest.mark.parametrize("factory", ["tiny_distilbert", "tiny_roberta", "tiny_vit", "tiny_gpt2"])
def test_other_families_reach_onnx_and_openvino(cli, tmp_path: Path, factory: str) -> None:
    out = tmp_path / "out"
    kind = ["--output-kind", "logits:logits"] if factory == "tiny_gpt2" else HIDDEN
    res = cli("convert", f"{MODELS}:{factory}", "--to", "onnx,openvino", "-o", out, *NO_LATENCY, *kind)
    assert res.exit_code == 0, res.output
    rows = res.report(out)["artifacts"]
    assert [r["status"] for r in rows] == ["passed", "passed"], rows
    assert not any(o["degenerate"] for r in rows for o in r["parity"]["outputs"])
