"""The two TFLite paths side by side: onnx2tf 1.x through TensorFlow's converter (`TfliteFromOnnx`, the default)
and onnx2tf 2.x's flatbuffer_direct (`tflite@TfliteFromOnnxDirect`).

One `convcli convert MODEL --to tflite,tflite@TfliteFromOnnxDirect` per model, so both files are converted from the
same simplified ONNX and timed in the same interleaved rounds against the same PyTorch source (2 threads, batch 1):
conversion seconds of each step, parity (max abs error) and LiteRT latency, with the ratio direct / TF path.

    PYTHONPATH=$PWD .venv/bin/python bench/tflite_paths.py [--models resnet18,squeezenet1_0] [--runs 20]

Writes bench/tflite_paths.md (included in docs/benchmarks.md by bench/run_bench.py) and bench/out/tflite_paths/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from run_bench import machine, run  # noqa: E402

OUT = ROOT / "bench" / "out" / "tflite_paths"
TABLE = ROOT / "bench" / "tflite_paths.md"
MODELS = ["mobilenet_v3_small", "squeezenet1_0", "shufflenet_v2_x1_0", "mobilenet_v2", "efficientnet_b0",
          "resnet18", "regnet_y_400mf", "googlenet"]
DIRECT = "tflite-fp32@TfliteFromOnnxDirect"


def measure(name: str, runs: int) -> dict[str, Any]:
    out = OUT / name
    code, seconds, log = run([sys.executable, "-m", "convcli", "convert", f"{ROOT}/bench/tv_factory.py:{name}",
                              "--input", "x:batch=1x3x224x224:float32", "--to", "tflite,tflite@TfliteFromOnnxDirect",
                              "--runs", str(runs), "--batch", "1", "--threads", "2", "--samples", "4", "-o", out])
    (OUT / f"{name}.log").write_text(log)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return {"exit": code, "seconds": seconds, "report": report}


def row(name: str, res: dict[str, Any]) -> str:
    report = res["report"]
    if report is None:
        return f"| {name} | exit {res['exit']}, no report (bench/out/tflite_paths/{name}.log) | | | | | | |"
    rows = {a["id"]: a for a in report["artifacts"]}
    steps = {s["name"]: s["seconds"] for s in report["steps"]}
    tf, direct = rows.get("tflite-fp32"), rows.get(DIRECT)

    def cell(a: dict[str, Any] | None) -> tuple[str, float | None]:
        if a is None or a["status"] != "passed":
            return (a or {}).get("status", "missing"), None
        p50 = (a.get("latency_ms") or {}).get("p50")
        return f"{a['parity']['max_abs_err']:.0e}", p50

    (tf_err, tf_ms), (d_err, d_ms) = cell(tf), cell(direct)
    ratio = f"{d_ms / tf_ms:.2f}x" if tf_ms and d_ms else "-"
    return (f"| {name} | {steps.get('TfliteFromOnnx', 0):.1f} | {steps.get('TfliteFromOnnxDirect', 0):.1f} | "
            f"{tf_err} | {d_err} | {tf_ms or 0:.2f} | {d_ms or 0:.2f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["## TFLite: the TensorFlow path vs flatbuffer_direct", "",
             f"`bench/tflite_paths.py` on {machine()}: per model one `convcli convert --to "
             "tflite,tflite@TfliteFromOnnxDirect` (fp32, batch 1, 2 threads, random weights, parity on 4 random "
             f"inputs, {args.runs} timed runs per round, both files timed in the same interleaved rounds). Convert "
             "s: the step alone (the ONNX export and simplification are shared). p50: LiteRT's median latency; "
             "ratio < 1: the direct file is faster.", "",
             "| model | convert s (TF path) | convert s (direct) | max err (TF path) | max err (direct) | "
             "p50 ms (TF path) | p50 ms (direct) | p50 direct / TF path |", "|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        res = measure(name, args.runs)
        lines.append(row(name, res))
        print(lines[-1], flush=True)
    TABLE.write_text("\n".join(lines) + "\n")
    print(f"wrote {TABLE}")


if __name__ == "__main__":
    main()
