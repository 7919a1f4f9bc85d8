"""convcli's fastest passing artifact vs the best by-hand backend configuration on this machine.

    PYTHONPATH=. .venv/bin/python bench/by_hand.py resnet18 --convcli-dir bench/out/byhand/resnet18-convcli \
        --calibration bench/out/byhand/resnet18-calib.npy --json bench/out/byhand/resnet18.json

Every by-hand configuration below is built with the backend's own API, written out so that a reader can check
it (no convcli code builds or runs any of them). convcli's artifact is read from its report.json
(``fastest_passed``) and loaded with its runtime the way a user would. Then all of them, and the PyTorch source,
are timed together in one process, interleaved in round-robin rounds (convcli's own ``time_round_robin``, the
only convcli code used here besides its offline switches), with the same threads, the same inputs, batch 1
and 8; each one's cosine is measured against PyTorch on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes" / "models"))

from convcli.core.offline import apply_offline_env  # noqa: E402  (telemetry off: no connection leaves)

apply_offline_env()

import torch  # noqa: E402

from convcli.parity.latency import Timer, time_round_robin  # noqa: E402

THREADS = 2
BATCHES = (1, 8)
SAMPLES = 16
PASS_COSINE = 0.99


def cpu_flags() -> set[str]:
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def has_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


# -- the models and their inputs -------------------------------------------------------------------------

def source(name: str) -> tuple[torch.nn.Module, dict[str, np.ndarray], str]:
    """The PyTorch model, SAMPLES seeded inputs (not the calibration data), and a line on what they are."""
    rng = np.random.default_rng(123)
    if name == "resnet18":
        from torchvision_models import resnet18  # random weights, BatchNorm statistics re-estimated

        x = rng.uniform(0, 1, size=(SAMPLES, 3, 224, 224)).astype(np.float32)
        return resnet18(), {"x": x}, "16 seeded uniform [0, 1) 224x224 images (calibration: 16 others)"
    if name == "tiny_transformer":
        from tiny_transformer import build

        torch.backends.mha.set_fastpath_enabled(False)
        ids = rng.integers(0, 1000, size=(SAMPLES, 16)).astype(np.int64)
        return build(), {"input_ids": ids}, ("16 seeded random token-id sequences of length 16 (the model takes no "
                                             "attention mask; calibration: 32 other seeded sequences)")
    if name == "minilm":
        from minilm import build

        parity = np.load(ROOT / "calibration_data" / "sentences" / "parity.npz")
        feed = {k: parity[k][:SAMPLES] for k in ("input_ids", "attention_mask")}
        lengths = feed["attention_mask"].sum(1)
        return build(), feed, (f"the first 16 of the 70 real sentences in calibration_data/sentences/parity.npz, "
                               f"tokenized, {lengths.min()}-{lengths.max()} tokens padded to 64 with their real "
                               "attention masks (calibration: the other 128 sentences, calib.npz)")
    raise SystemExit(f"unknown model {name}")


def export_onnx(model: torch.nn.Module, inputs: dict[str, np.ndarray], path: Path) -> None:
    """torch.onnx.export (dynamo), dynamic batch (and sequence), weights inline, example batch 2."""
    example = tuple(torch.from_numpy(v[:2]) for v in inputs.values())
    batch = torch.export.Dim("batch", min=1)
    dims: dict[int, Any] = {0: batch}
    if "input_ids" in inputs:  # token ids: the sequence length is dynamic too
        dims[1] = torch.export.Dim("seq", min=2, max=512)
    with torch.no_grad():
        torch.onnx.export(model, example, str(path), dynamo=True, input_names=list(inputs), output_names=["output"],
                          dynamic_shapes=tuple(dims for _ in inputs), external_data=False)


# -- the by-hand configurations ------------------------------------------------------------------------------

def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return lambda feed: sess.run(None, feed)[0]


PRE_NOTES: list[str] = []  # what quant_pre_process needed, for the table's notes


def pre_process(fp32: Path, pre: Path) -> Path:
    """onnxruntime.quantization.shape_inference.quant_pre_process (symbolic shape inference, ONNX shape
    inference, ORT basic graph optimization). Its symbolic shape inference gives up on the dynamo export of a
    transformer with a dynamic sequence length ("Incomplete symbolic shape inference"); then it runs again with
    skip_symbolic_shape=True, its documented switch for that case, and the note says so."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if pre.exists():
        return pre
    cwd = Path.cwd()
    os.chdir(pre.parent)  # its symbolic shape inference leaves temporary files in the current directory on failure
    try:
        quant_pre_process(str(fp32), str(pre))
    except Exception as exc:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        note = (f"quant_pre_process: {' '.join(str(exc).split())[:80]}; ran with skip_symbolic_shape=True")
        if note not in PRE_NOTES:
            PRE_NOTES.append(note)
    finally:
        os.chdir(cwd)
    return pre


def ort_static_int8(fp32: Path, out: Path, calib: dict[str, np.ndarray], activations: str) -> Path:
    """ORT static QDQ int8: quant_pre_process first (folds the Identity nodes the export leaves), then
    per-channel int8 weights, ``activations`` ("S8" or "U8") activations, MinMax calibration."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    pre = pre_process(fp32, fp32.with_name("pre.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calib.values())))
            self.feeds = iter([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if activations == "S8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def ort_dynamic_int8(fp32: Path, out: Path) -> Path:
    """ORT dynamic int8 (weights per channel, activations quantized at run time) after quant_pre_process."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = pre_process(fp32, fp32.with_name("pre.onnx"))
    quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return out


def ov_compile(model: Any, hint: str) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], str]:
    """OpenVINO CPU, LATENCY hint, THREADS threads, INFERENCE_PRECISION_HINT=hint; returns the runner and the
    precision the plugin actually took (it ignores bf16 where the CPU has none)."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                       "INFERENCE_NUM_THREADS": THREADS,
                                                       "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        request.infer({n: feed[n] for n in names})
        return request.get_output_tensor(0).data.copy()

    return run, str(compiled.get_property("INFERENCE_PRECISION_HINT"))


def nncf_int8(fp32_ir: Any, calib: dict[str, np.ndarray], transformer: bool) -> Any:
    """NNCF post-training int8 (default MinMax + FastBiasCorrection), all calibration samples; the transformer
    preset for the encoder (what NNCF's docs tell one to pass for transformers)."""
    import nncf

    n = len(next(iter(calib.values())))
    data = nncf.Dataset([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])
    kwargs: dict[str, Any] = {"subset_size": n}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    return nncf.quantize(fp32_ir, data, **kwargs)


# -- convcli's artifact ----------------------------------------------------------------------------------

def convcli_best(report_dir: Path) -> tuple[dict[str, Any], Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """convcli's fastest passing artifact, loaded with its runtime: ORT (all graph optimizations) or OpenVINO
    (the f32 hint convcli measures its fp32/fp16/int8 OpenVINO rows at; the bf16 hint for its bf16 row)."""
    report = json.loads((report_dir / "report.json").read_text())
    best = report.get("fastest_passed") or report.get("best")
    if isinstance(best, dict):
        best = best.get("id")
    art = next(a for a in report["artifacts"] if a["id"] == best)
    path = Path(art["path"])
    if not path.is_absolute():
        path = report_dir / path
    if art["format"] == "onnx":
        return art, ort_session(path)
    if art["format"] == "openvino":
        hint = "bf16" if art.get("precision") == "bf16" else "f32"
        run, _ = ov_compile(str(path if path.suffix == ".xml" else next(path.glob("*.xml"))), hint)
        return art, run
    raise SystemExit(f"convcli's best artifact is {art['format']}: this benchmark loads onnx and openvino only")


# -- measuring -----------------------------------------------------------------------------------------------

def cosine_min(ref: np.ndarray, out: np.ndarray) -> float:
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = out.reshape(len(out), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    return float(cos.min())


def outputs(run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray]) -> np.ndarray:
    n = len(next(iter(inputs.values())))
    return np.concatenate([np.asarray(run({k: v[i:i + 8] for k, v in inputs.items()}), dtype=np.float32)
                           for i in range(0, n, 8)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["resnet18", "tiny_transformer", "minilm"])
    parser.add_argument("--convcli-dir", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, required=True, help=".npy (one input) or .npz")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--runs", type=int, help="timed runs per configuration and batch "
                                                     "(default 30; 200 for the sub-millisecond transformer)")
    parser.add_argument("--max-seconds", type=float, default=8.0)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    model, inputs, inputs_note = source(args.model)
    transformer = args.model in ("tiny_transformer", "minilm")
    args.runs = args.runs or (200 if args.model == "tiny_transformer" else 30)
    loaded = np.load(args.calibration)
    calib = {next(iter(inputs)): loaded} if isinstance(loaded, np.ndarray) else dict(loaded)
    with torch.no_grad():
        reference = model(*[torch.from_numpy(v) for v in inputs.values()]).numpy()

    import openvino as ov

    runs: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {}
    rows: dict[str, dict[str, Any]] = {}

    def add(label: str, build: Callable[[], Any], note: str = "") -> None:
        t0 = time.perf_counter()
        try:
            got = build()
        except Exception as exc:  # a configuration that cannot be built is a row that says why
            rows[label] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}
            print(f"{label}: {rows[label]['error']}", flush=True)
            return
        run, actual = got if isinstance(got, tuple) else (got, None)
        out = outputs(run, inputs)
        rows[label] = {"build_s": time.perf_counter() - t0, "cosine_min": cosine_min(reference, out),
                       "max_abs_err": float(np.abs(out - reference).max()), "note": note}
        if actual is not None:
            rows[label]["precision_taken"] = actual
        runs[label] = run
        print(f"{label}: built in {rows[label]['build_s']:.1f}s, cosine {rows[label]['cosine_min']:.5f}", flush=True)

    def torch_run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(*[torch.from_numpy(v) for v in feed.values()]).numpy()

    add("PyTorch eager (source)", lambda: torch_run)
    art, best_run = convcli_best(args.convcli_dir)
    add(f"convcli best: {art['id']}", lambda: best_run)

    with tempfile.TemporaryDirectory(prefix="byhand-") as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        export_onnx(model, inputs, fp32)
        add("ORT fp32 (ORT_ENABLE_ALL)", lambda: ort_session(fp32))
        add("ORT static QDQ int8 (pre-processed, per-channel, S8 act.)",
            lambda: ort_session(ort_static_int8(fp32, work / "qdq_s8.onnx", calib, "S8")))
        add("ORT static QDQ int8 (pre-processed, per-channel, U8 act.)",
            lambda: ort_session(ort_static_int8(fp32, work / "qdq_u8.onnx", calib, "U8")))
        if transformer:
            add("ORT dynamic int8 (pre-processed, per-channel)",
                lambda: ort_session(ort_dynamic_int8(fp32, work / "dyn.onnx")))
        ir = ov.convert_model(str(fp32))
        add("OpenVINO fp32 IR, f32 hint", lambda: ov_compile(ir, "f32"))
        bf16 = has_bf16()
        if bf16:
            add("OpenVINO fp32 IR, bf16 hint", lambda: ov_compile(ir, "bf16"))
        else:
            rows["OpenVINO fp32 IR, bf16 hint"] = {"error": "not on this CPU (no avx512_bf16 / amx_bf16)"}
        q: dict[str, Any] = {}

        def quantized() -> Any:
            if "ir" not in q:
                q["ir"] = nncf_int8(ir, calib, transformer)
            return q["ir"]

        preset = ", transformer preset" if transformer else ""
        add(f"OpenVINO NNCF int8{preset}, f32 hint", lambda: ov_compile(quantized(), "f32"))
        if bf16:
            add(f"OpenVINO NNCF int8{preset}, bf16 hint", lambda: ov_compile(quantized(), "bf16"))
        else:
            rows[f"OpenVINO NNCF int8{preset}, bf16 hint"] = {"error": "not on this CPU (no avx512_bf16 / amx_bf16)"}

        # A/A check: convcli's artifact loaded a second time, timed last in every round. The gap between the two
        # copies of one model is this run's noise and position bias, the yardstick for every other gap.
        _, again = convcli_best(args.convcli_dir)
        add(f"convcli best again: {art['id']} (A/A check, timed last)", lambda: again)

        # Time everything together: each round runs each configuration a slice of its runs at each batch.
        timers: dict[Any, Timer] = {}
        for b in BATCHES:
            feed = {k: np.ascontiguousarray(v[:b]) for k, v in inputs.items()}
            for label, run in runs.items():
                timers[(label, b)] = Timer(lambda run=run, feed=feed: run(feed), b, args.runs, args.max_seconds)

        def dropped(key: Any, exc: Exception) -> None:
            rows[key[0]]["timing_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"

        t0 = time.perf_counter()
        got = time_round_robin(timers, warmup=3, runs=args.runs, on_error=dropped)
        timing_s = time.perf_counter() - t0
    for (label, b), st in got.items():
        rows[label].setdefault("latency", {})[str(b)] = {"p50": st.p50, "p25": st.p25, "p75": st.p75,
                                                          "halfwidth": st.p50_halfwidth, "runs": st.runs}
    result = {"model": args.model, "inputs": inputs_note, "threads": THREADS, "batches": list(BATCHES),
              "convcli": {"id": art["id"], "format": art["format"], "precision": art.get("precision"),
                          "report_cosine_min": (art.get("parity") or {}).get("cosine_min")},
              "rows": rows, "timing_s": timing_s, "notes": PRE_NOTES, "runs": args.runs, "pass_cosine": PASS_COSINE,
              "onnxruntime": __import__("onnxruntime").__version__, "openvino": ov.__version__,
              "nncf": __import__("nncf").__version__, "torch": torch.__version__}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json} (timing {timing_s:.0f}s)")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
