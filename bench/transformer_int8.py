"""Transformer INT8 on a real sentence encoder: all-MiniLM-L6-v2 on the shipped sentences.

Every variant is judged by the lowest per-sentence cosine against the PyTorch source on the 70 parity sentences
(never calibrated on) and timed side by side in one process: rounds of interleaved runs over all variants, the
median of each round's median, at batch 1 and 8, seq 64, 2 intra-op threads.

    PYTHONPATH=$PWD python bench/transformer_int8.py [--rounds 5] [--iters 20] [--out /tmp/tint8]

Prints a Markdown table (and writes it to OUT/table.md with the fusion counts and the CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "models"))
DATA = ROOT / "calibration_data" / "sentences"
THREADS = 2
INPUTS = ["input_ids", "attention_mask"]


def cpu_name() -> str:
    flags = ""
    name = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not name:
            name = line.split(":", 1)[1].strip()
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = line
            break
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    return f"{name} ({', '.join(isa)}), {THREADS} threads"


def export(out: Path) -> tuple[Path, Path]:
    import torch
    from minilm import build

    model = build()
    calib = np.load(DATA / "calib.npz")
    args = tuple(torch.from_numpy(calib[k][:2]) for k in INPUTS)
    dyn, ts = out / "dynamo.onnx", out / "torchscript.onnx"
    if not dyn.exists():
        b, s = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2, max=512)
        torch.onnx.export(model, args, str(dyn), dynamo=True, input_names=INPUTS, output_names=["sentence_embedding"],
                          dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}), external_data=False)
    if not ts.exists():
        axes = {k: {0: "batch", 1: "seq"} for k in INPUTS}
        torch.onnx.export(model, args, str(ts), dynamo=False, input_names=INPUTS, output_names=["sentence_embedding"],
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True)
    return dyn, ts


def reference(parity: dict[str, np.ndarray]) -> np.ndarray:
    import torch
    from minilm import build

    with torch.no_grad():
        return build()(*(torch.from_numpy(parity[k]) for k in INPUTS)).numpy()


def min_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    num = (ref * got).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    return float((num / np.maximum(den, 1e-12)).min())


# -- ONNX Runtime variants --------------------------------------------------------------------------------


def preprocess(src: Path, out: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not out.exists():
        here = Path.cwd()
        os.chdir(out.parent)  # symbolic shape inference leaves sym_shape_infer_temp.onnx in the working folder
        try:
            quant_pre_process(str(src), str(out))
        except Exception:  # it rejects the dynamo export ("cyclic graph"); convcli retries the same way
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        finally:
            os.chdir(here)
    return out


def slim(src: Path, out: Path) -> Path:
    """What convcli's SimplifyOnnx does by default (onnxslim) before any int8 step."""
    import onnx
    import onnxslim

    if not out.exists():
        onnx.save(onnxslim.slim(onnx.load(str(src))), str(out))
    return out


def ort_dynamic(src: Path, out: Path, per_channel: bool, exclude_attention_matmuls: bool = True) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    from convcli.passes.quantize_onnx import activation_matmuls, ensure_node_names

    if out.exists():
        return out
    model = onnx.load(str(src))
    ensure_node_names(model)
    named = out.with_suffix(".named.onnx")
    onnx.save(model, str(named))
    exclude = activation_matmuls(model) if exclude_attention_matmuls else []
    quantize_dynamic(str(named), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                     op_types_to_quantize=sorted(IntegerOpsRegistry), nodes_to_exclude=exclude,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def ort_static(src: Path, out: Path, calib: dict[str, np.ndarray], matmul_only: bool = False) -> tuple[Path, int]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from convcli.passes.quantize_onnx import attention_mask_nodes, ensure_node_names

    model = onnx.load(str(src))
    ensure_node_names(model)
    named = out.with_suffix(".named.onnx")
    onnx.save(model, str(named))
    guarded = attention_mask_nodes(model)
    softmax = [n.name for n in model.graph.node if n.op_type == "Softmax"]

    class Reader:
        def __init__(self) -> None:
            self.feeds = [{k: calib[k][i:i + 16] for k in INPUTS} for i in range(0, len(calib[INPUTS[0]]), 16)]

        def get_next(self) -> dict[str, np.ndarray] | None:
            return self.feeds.pop(0) if self.feeds else None

    if not out.exists():
        ops = ["MatMul"] if matmul_only else sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - {"Softmax"})
        quantize_static(str(named), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                        nodes_to_exclude=guarded + softmax, calibrate_method=CalibrationMethod.MinMax)
    return out, len(guarded)


def ort_transformer_optimizer(src: Path, out: Path) -> tuple[Path, dict[str, int]]:
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=384)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(out))
    return out, stats


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtRunner:
    def __init__(self, path: Path) -> None:
        self.session = ort_session(path)
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: feed[k] for k in self.names})[0]


# -- OpenVINO variants -------------------------------------------------------------------------------------


class OvRunner:
    def __init__(self, model: Any) -> None:
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": THREADS,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(self.request.infer(feed)[0])


def nncf_quantize(model: Any, calib: dict[str, np.ndarray], **kwargs: Any) -> Any:
    import nncf

    items = [{k: calib[k][i:i + 1] for k in INPUTS} for i in range(len(calib[INPUTS[0]]))]
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **kwargs)


# -- measuring ----------------------------------------------------------------------------------------------


def run_all(runner: Any, data: dict[str, np.ndarray], batch: int = 10) -> np.ndarray:
    n = len(data[INPUTS[0]])
    return np.concatenate([runner({k: data[k][i:i + batch] for k in INPUTS}) for i in range(0, n, batch)])


def latency(variants: dict[str, Any], parity: dict[str, np.ndarray], rounds: int, iters: int) -> dict[str, dict]:
    feeds = {b: {k: np.ascontiguousarray(parity[k][:b]) for k in INPUTS} for b in (1, 8)}
    per: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in variants}
    for runner in variants.values():  # warm-up
        for feed in feeds.values():
            for _ in range(3):
                runner(feed)
    for _ in range(rounds):
        for name, runner in variants.items():
            for b, feed in feeds.items():
                times = []
                for _ in range(iters):
                    t = time.perf_counter()
                    runner(feed)
                    times.append((time.perf_counter() - t) * 1000)
                per[name][b].append(statistics.median(times))
    return {name: {b: statistics.median(v) for b, v in d.items()} for name, d in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/convcli-bench-tint8"))
    parser.add_argument("--only", default="", help="comma-separated substrings of variant names to keep")
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.WARNING)

    import openvino as ov
    from nncf import ModelType, QuantizationPreset
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    calib = dict(np.load(DATA / "calib.npz"))
    parity = dict(np.load(DATA / "parity.npz"))
    ref = reference(parity)
    dyn, ts = export(a.out)
    pre = preprocess(slim(dyn, a.out / "dynamo.slim.onnx"), a.out / "dynamo.pre.onnx")
    notes: dict[str, Any] = {"cpu": cpu_name()}

    builders: dict[str, Any] = {
        "ORT fp32 (dynamo export)": lambda: OrtRunner(dyn),
        "ORT dynamic int8 per-tensor": lambda: OrtRunner(ort_dynamic(pre, a.out / "dyn_pt.onnx", False)),
        "ORT dynamic int8 per-channel": lambda: OrtRunner(ort_dynamic(pre, a.out / "dyn_pc.onnx", True)),
        "ORT dynamic int8 per-channel, attention MatMuls allowed (same graph: noise check)":
            lambda: OrtRunner(ort_dynamic(pre, a.out / "dyn_pc_all.onnx", True, False)),
    }

    def static() -> OrtRunner:
        path, guarded = ort_static(pre, a.out / "static.onnx", calib)
        notes["static_mask_nodes_kept_float"] = guarded
        return OrtRunner(path)

    builders["ORT static QDQ (mask Add + Softmax float)"] = static
    builders["ORT static QDQ, MatMul only"] = lambda: OrtRunner(ort_static(pre, a.out / "static_mm.onnx", calib,
                                                                            matmul_only=True)[0])

    for tag, src in (("dynamo", dyn), ("torchscript", ts)):
        def opt_fp32(tag: str = tag, src: Path = src) -> OrtRunner:
            path, stats = ort_transformer_optimizer(src, a.out / f"{tag}.bertopt.onnx")
            notes[f"fusions_{tag}"] = stats
            print(f"fusions on the {tag} export: {stats}", flush=True)
            return OrtRunner(path)

        def opt_int8(tag: str = tag, src: Path = src) -> OrtRunner:
            path = a.out / f"{tag}.bertopt.onnx"
            if not path.exists():
                ort_transformer_optimizer(src, path)
            return OrtRunner(ort_dynamic(path, a.out / f"{tag}.bertopt.dyn_pc.onnx", True))

        builders[f"ORT optimizer(bert) on {tag} export, fp32"] = opt_fp32
        builders[f"ORT optimizer(bert) on {tag} export + dynamic int8 per-channel"] = opt_int8

    ov_fp32 = ov.convert_model(str(dyn))
    sq = lambda alpha: AdvancedQuantizationParameters(  # noqa: E731
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha))
    builders["OV fp32"] = lambda: OvRunner(ov_fp32)
    builders["OV NNCF defaults (performance, generic)"] = lambda: OvRunner(nncf_quantize(ov_fp32, calib))
    builders["OV NNCF transformer, mixed, SmoothQuant off"] = lambda: OvRunner(nncf_quantize(
        ov_fp32, calib, model_type=ModelType.TRANSFORMER, preset=QuantizationPreset.MIXED,
        advanced_parameters=sq(-1)))
    builders["OV NNCF transformer, mixed (SmoothQuant 0.95, NNCF's default)"] = lambda: OvRunner(nncf_quantize(
        ov_fp32, calib, model_type=ModelType.TRANSFORMER, preset=QuantizationPreset.MIXED))
    builders["OV NNCF transformer, mixed, SmoothQuant 0.5"] = lambda: OvRunner(nncf_quantize(
        ov_fp32, calib, model_type=ModelType.TRANSFORMER, preset=QuantizationPreset.MIXED, advanced_parameters=sq(0.5)))

    keep = [s for s in a.only.split(",") if s]
    runners: dict[str, Any] = {}
    cosines: dict[str, float] = {}
    for name, make in builders.items():
        if keep and not any(s in name for s in keep):
            continue
        t = time.perf_counter()
        runners[name] = make()
        cosines[name] = min_cosine(ref, run_all(runners[name], parity))
        print(f"{name}: min cosine {cosines[name]:.4f} (built in {time.perf_counter() - t:.0f} s)", flush=True)
    times = latency(runners, parity, a.rounds, a.iters)
    lines = [f"CPU: {notes['cpu']}; seq 64; {a.rounds} rounds x {a.iters} runs, median of round medians", "",
             "| variant | min cosine vs PyTorch (70 sentences) | p50 ms b1 | p50 ms b8 |", "|---|---|---|---|"]
    for name in runners:
        lines.append(f"| {name} | {cosines[name]:.4f} | {times[name][1]:.2f} | {times[name][8]:.2f} |")
    lines += ["", "notes: " + json.dumps(notes)]
    text = "\n".join(lines)
    print(text)
    (a.out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
