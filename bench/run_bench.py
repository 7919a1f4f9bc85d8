"""convcli benchmarks: every reference model to every target and precision, measured side by side in one run.

    .venv/bin/python bench/run_bench.py                 # all sections -> docs/benchmarks.md
    .venv/bin/python bench/run_bench.py --only models   # one section (models|byhand|pruning|coverage|cache|overhead)
    .venv/bin/python bench/run_bench.py --only byhand   # convcli's fastest passing artifact vs by-hand backends
    .venv/bin/python bench/coverage.py                  # coverage of a model zoo -> docs/coverage.md (make coverage)

Numbers are medians on this shared, noisy 2-core machine; every comparison in a table comes from the same run
(same process, same data, same thread count). Raw reports go to bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
DOC = ROOT / "docs" / "benchmarks.md"
CONVCLI = [sys.executable, "-m", "convcli"]
sys.path.insert(0, str(ROOT))

DIGITS = ROOT / "recipes/models/digits_cnn.py:build"
MODELS: dict[str, dict[str, Any]] = {
    "digits_cnn": {"model": f"{DIGITS}", "weights": ROOT / "recipes/models/digits_cnn.pt", "batches": "1,32",
                   "extra": ["--validation", ROOT / "calibration_data/digits/val",
                             "--calibration", ROOT / "calibration_data/digits/calib"]},
    "resnet18": {"model": f"{ROOT}/recipes/models/torchvision_models.py:resnet18", "batches": "1,8", "image": 224},
    "mobilenet_v3_small": {"model": f"{ROOT}/recipes/models/torchvision_models.py:mobilenet_v3_small",
                           "batches": "1,8", "image": 224},
    "tiny_transformer": {"model": f"{ROOT}/recipes/models/tiny_transformer.py:build", "batches": "1,8",
                         "calib_ids": True},
    # TensorFlow source: keras.applications.MobileNetV2(weights=None), written by bench/keras_mobilenet_v2.py.
    "keras_mobilenet_v2": {"model": OUT / "keras_mobilenet_v2.keras", "make": "bench/keras_mobilenet_v2.py",
                           "batches": "1,8", "image": 224, "nhwc": True,
                           "targets": "onnx:fp32+fp16+int8,openvino:fp32+fp16+int8,ncnn:fp32+fp16,"
                                      "tflite:fp32+fp16+int8"},
}
TARGETS = "onnx:fp32+fp16+int8,openvino:fp32+fp16+int8,ncnn:fp32+fp16+int8,tflite:fp32+fp16+int8,tensorrt:fp16"


def run(cmd: list[Any], timeout: float = 3600) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CONVCLI_CACHE_DIR": tempfile.mkdtemp(prefix="convcli-bench-")})
    return proc.returncode, time.perf_counter() - t0, proc.stdout + proc.stderr


def calibration_npz(name: str, spec: dict[str, Any]) -> Path:
    """Random-weight models get random calibration data of the right shape (their accuracy is meaningless)."""
    import numpy as np

    path = OUT / f"{name}-calib.npz"
    rng = np.random.default_rng(0)
    if spec.get("calib_ids"):
        np.savez(path, input_ids=rng.integers(0, 1000, size=(32, 16)).astype(np.int64))
        return path
    size = spec["image"]
    shape = (16, size, size, 3) if spec.get("nhwc") else (16, 3, size, size)
    path = path.with_suffix(".npy")  # one input: a .npy feeds it whatever its name
    np.save(path, rng.uniform(0, 1, size=shape).astype(np.float32))
    return path


def bench_models(names: list[str]) -> dict[str, Any]:
    results = {}
    for name in names:
        spec = MODELS[name]
        out = OUT / name
        if spec.get("make") and not Path(spec["model"]).exists():
            code, seconds, log = run([sys.executable, ROOT / spec["make"], spec["model"]])
            assert code == 0, log
        cmd = [*CONVCLI, "convert", spec["model"], "--to", spec.get("targets", TARGETS), "-o", out,
               "--batch", spec["batches"],
               "--runs", "20", "--samples", "16"]
        if spec.get("weights"):
            cmd += ["--weights", spec["weights"]]
        cmd += spec.get("extra") or ["--calibration", calibration_npz(name, spec)]
        code, seconds, log = run(cmd)
        (OUT / f"{name}.log").write_text(log)
        report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
        results[name] = {"exit": code, "seconds": seconds, "report": report}
        print(f"{name}: exit {code} in {seconds:.0f}s", flush=True)
    return results


def fmt_ms(lat: dict[str, Any] | None) -> str:
    return "-" if not lat else f"{lat['p50']:.2f}"


def models_markdown(results: dict[str, Any]) -> str:
    lines = ["## Reference models: every target and precision", ""]
    for name, res in results.items():
        report = res["report"]
        if report is None:
            lines += [f"### {name}", "", f"convcli exited {res['exit']} without a report; see bench/out/{name}.log", ""]
            continue
        src = report["source"]
        batches = list(src["latency_by_batch"])
        lines += [f"### {name}", "",
                  f"Source: {src.get('runner') or src['format']}; converted and measured in "
                  f"{res['seconds']:.0f} s (exit {res['exit']}). Fastest artifact that passed: "
                  f"**{report['fastest_passed']}**.", ""]
        head = ["artifact", "status"] + [f"p50 ms b={b}" for b in batches] + \
            [f"speedup b={b}" for b in batches] + ["size", "max abs err", "cosine", "accuracy", "convert s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        acc = f"{src['accuracy'] * 100:.2f}%" if src.get("accuracy") is not None else "-"
        size = f"{src['size_bytes'] / 1e6:.2f} MB" if src.get("size_bytes") else "-"
        lines.append("| " + " | ".join([f"source ({src['format']})", "reference"]
                                       + [fmt_ms(src["latency_by_batch"].get(b)) for b in batches]
                                       + ["1.00x"] * len(batches) + [size, "-", "-", acc, "-"]) + " |")
        step_seconds = {s["id"]: s["seconds"] for s in report["steps"]}
        chains = {s["name"]: s for s in report["steps"]}
        for a in report["artifacts"]:
            lat = a.get("latency_by_batch") or {}
            speed = []
            for b in batches:
                if b in lat and src["latency_by_batch"].get(b):
                    speed.append(f"{src['latency_by_batch'][b]['p50'] / lat[b]['p50']:.2f}x")
                else:
                    speed.append("-")
            p = a.get("parity") or {}
            status = a["status"] + (" *" if a["id"] == report["fastest_passed"] else "")
            if a["status"] in ("error", "unavailable") and a.get("error"):
                status += f": {a['error'][:90]}"
            acc = f"{a['accuracy'] * 100:.2f}%" if a.get("accuracy") is not None else "-"
            conv = sum(step_seconds.get(s, 0) for s in _chain_ids(a, chains))
            lines.append("| " + " | ".join(
                [a["id"], status] + [fmt_ms(lat.get(b)) for b in batches] + speed
                + [f"{a['size_bytes'] / 1e6:.2f} MB" if a.get("size_bytes") else "-",
                   f"{p['max_abs_err']:.1e}" if p.get("max_abs_err") is not None else "-",
                   f"{p['cosine_min']:.5f}" if p.get("cosine_min") is not None else "-", acc,
                   f"{conv:.1f}" if conv else "-"]) + " |")
        lines += ["", "Conversion time per step (s): " + ", ".join(
            f"{s['id']} {s['name']}{' ' + json.dumps(s['options']) if s['options'].get('precision') else ''} "
            f"{s['seconds']:.1f}" for s in report["steps"]), ""]
        flags = [f"{a['id']}: {f}" for a in report["artifacts"] for f in a.get("flags", [])]
        if flags:
            lines += ["Flags: " + "; ".join(flags), ""]
    return "\n".join(lines)


def _chain_ids(artifact: dict[str, Any], steps: dict[str, Any]) -> list[str]:
    names = artifact.get("chain", "").split(" -> ")[1:]
    return [steps[n]["id"] for n in names if n in steps]


# -- convcli's fastest passing artifact vs the best by-hand configuration ---------------------------------

SENTENCES = ROOT / "calibration_data" / "sentences"
BYHAND: dict[str, dict[str, Any]] = {  # model, calibration, extra convert options
    "resnet18": {"model": MODELS["resnet18"]["model"], "extra": []},
    # all-MiniLM-L6-v2 (recipes/models/minilm.py): real sentences for calibration and parity, judged as embeddings
    "minilm": {"model": f"{ROOT}/recipes/models/minilm.py:build", "calibration": SENTENCES / "calib.npz",
               "extra": ["--data", SENTENCES / "parity.npz", "--output-kind", "output:embedding",
                         "--calibration-samples", "128"]},
    "tiny_transformer": {"model": MODELS["tiny_transformer"]["model"], "extra": []},
}
BYHAND_CONVERT = ["--to", "onnx,openvino", "--precision", "auto", "--batch", "1,8", "--threads", "2", "--runs", "20"]


def bench_byhand(names: list[str]) -> dict[str, Any]:
    """convcli convert (--precision auto: fp32, fp16, int8, and bf16 where the CPU has it, to ONNX and OpenVINO),
    then bench/by_hand.py: its fastest passing
    artifact and every by-hand configuration timed together, interleaved, in one process."""
    results: dict[str, Any] = {}
    for name in names:
        spec = BYHAND[name]
        calib = spec.get("calibration") or calibration_npz(name, MODELS[name])
        out = OUT / "byhand" / f"{name}-convcli"
        code, seconds, log = run([*CONVCLI, "convert", spec["model"], *BYHAND_CONVERT, "--calibration", calib,
                                  *spec["extra"], "-o", out])
        (OUT / f"byhand-{name}-convcli.log").write_text(log)
        res: dict[str, Any] = {"convcli_exit": code, "convcli_seconds": seconds}
        if (out / "report.json").exists():
            target = OUT / "byhand" / f"{name}.json"
            code2, seconds2, log2 = run([sys.executable, ROOT / "bench" / "by_hand.py", name, "--convcli-dir", out,
                                         "--calibration", calib, "--json", target])
            (OUT / f"byhand-{name}.log").write_text(log2)
            res.update({"exit": code2, "seconds": seconds2})
            if code2 == 0:
                res.update(json.loads(target.read_text()))
        print(f"byhand {name}: convcli exit {code} in {seconds:.0f}s, by-hand exit {res.get('exit')} "
              f"in {res.get('seconds', 0):.0f}s", flush=True)
        results[name] = res
    return results


def _lat(row: dict[str, Any], b: int) -> dict[str, Any] | None:
    return (row.get("latency") or {}).get(str(b))


def _fmt_lat(lat: dict[str, Any] | None) -> str:
    if not lat:
        return "-"
    return f"{lat['p50']:.2f} ({lat['p25']:.2f}-{lat['p75']:.2f})"


def byhand_verdict(res: dict[str, Any], b: int) -> tuple[str | None, float | None, bool | None]:
    """(best by-hand passing configuration, convcli best p50 / its p50, whether the difference is within the
    noise: the ~95% intervals of the two medians overlap)."""
    rows = res["rows"]
    ours = next((r for k, r in rows.items() if k.startswith("convcli best")), None)
    hand = {k: r for k, r in rows.items() if not k.startswith(("convcli best", "PyTorch"))
            and (r.get("cosine_min") or 0) >= res["pass_cosine"] and _lat(r, b)}
    if not ours or not _lat(ours, b) or not hand:
        return None, None, None
    best = min(hand, key=lambda k: _lat(hand[k], b)["p50"])  # type: ignore[index]
    a, h = _lat(ours, b), _lat(hand[best], b)
    assert a is not None and h is not None
    overlap = abs(a["p50"] - h["p50"]) <= a["halfwidth"] + h["halfwidth"]
    return best, a["p50"] / h["p50"], overlap


def byhand_markdown(results: dict[str, Any], cpu: str) -> str:
    lines = ["## Fastest passing artifact vs the best by-hand configuration", "",
             f"CPU: {cpu}. `convcli convert MODEL {' '.join(BYHAND_CONVERT[:4])} --calibration C` (auto: fp32, "
             "fp16, int8, and OpenVINO bf16 where the CPU has it) picks its fastest artifact that passed "
             "(`fastest_passed`, `best`); `bench/by_hand.py` builds the configurations an engineer "
             "would try by hand with each backend's own API (written out there), loads convcli's pick with its "
             "runtime, and times all of them and the PyTorch source **together in one process, interleaved in "
             "round-robin rounds** (2 threads each, same inputs). p50 ms with the interquartile range in "
             "brackets; cosine = the lowest per-sample cosine vs PyTorch on 16 inputs that are not the "
             "calibration data. *Best by-hand* = the fastest by-hand row with cosine >= 0.99. The issue's goal: "
             "convcli's pick within 10% of it.", ""]
    for name, res in results.items():
        if "rows" not in res:
            lines += [f"### {name}", "", f"No result: convcli exit {res.get('convcli_exit')}, by-hand exit "
                      f"{res.get('exit')}; see bench/out/byhand-{name}*.log", ""]
            continue
        batches = res["batches"]
        lines += [f"### {name}", "", f"Inputs: {res['inputs']}. convcli's pick: **{res['convcli']['id']}** "
                  f"(convcli exit {res['convcli_exit']}: its own table in bench/out/byhand/{name}-convcli). "
                  f"ONNX Runtime {res['onnxruntime']}, OpenVINO {res['openvino'].split('-')[0]}, NNCF "
                  f"{res['nncf']}, torch {res['torch']}; {res.get('runs', 30)} timed runs per row and batch "
                  f"(fewer for rows slower than 8 s of runs), timing took {res['timing_s']:.0f} s.", "",
                  "| configuration | " + " | ".join(f"p50 ms b={b} (IQR)" for b in batches)
                  + " | cosine min | build s |", "|---|" + "---|" * (len(batches) + 2)]
        for label, row in res["rows"].items():
            if "error" in row:
                lines.append(f"| {label} | " + " | ".join(["-"] * len(batches)) + f" | {row['error']} | - |")
                continue
            shown = f"**{label}**" if label.startswith("convcli best") else label
            if row.get("precision_taken") and "bf16" in label:
                shown += f" (plugin took {row['precision_taken'].split(chr(39))[1]})" \
                    if "'" in row["precision_taken"] else ""
            lines.append(f"| {shown} | " + " | ".join(_fmt_lat(_lat(row, b)) for b in batches)
                         + f" | {row['cosine_min']:.5f} | {row['build_s']:.1f} |")
        lines.append("")
        lines += [f"- {note}" for note in res.get("notes", [])]
        rows = res["rows"]
        copies = [r for k, r in rows.items() if k.startswith("convcli best") and _lat(r, batches[0])]
        if len(copies) == 2:
            lines.append("- A/A check (the same convcli artifact loaded twice, one copy timed last in each round): "
                         + ", ".join(f"b={b} {_lat(copies[1], b)['p50'] / _lat(copies[0], b)['p50']:.2f}x"
                                     for b in batches if _lat(copies[0], b) and _lat(copies[1], b))
                         + ": gaps of this size between rows are noise, not a difference.")
        for b in batches:
            best, ratio, overlap = byhand_verdict(res, b)
            if ratio is None:
                lines.append(f"- b={b}: no ratio (a row is missing)")
                continue
            within = "within" if ratio <= 1.10 else "not within"
            noise = "; the two medians' ~95% intervals overlap: the difference is within this run's noise" \
                if overlap else "; the intervals do not overlap"
            lines.append(f"- b={b}: convcli best / best by-hand passing ({best}) = **{ratio:.2f}x**, "
                         f"{within} 10%{noise}.")
        lines.append("")
    notes = ROOT / "bench" / "NOTES-byhand.md"  # what the numbers mean, written by hand after a run
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


# -- coverage: bench/coverage.py (make coverage), its own page docs/coverage.md -------------------------------

COVERAGE_POINTER = ("## Coverage\n\nWhich models convert to which targets, and why the others do not: "
                    "[docs/coverage.md](coverage.md), written by `make coverage` (`bench/coverage.py`; "
                    "`--only coverage` here runs its smallest model per torchvision family).\n")


# -- pruning -----------------------------------------------------------------------------------------------

PRUNING = [  # (model, method:ratio, fine-tuning epochs): the digits CNN is trained (accuracy means something)
    ("digits_cnn", "structured:0.3", 0), ("digits_cnn", "structured:0.3", 3), ("digits_cnn", "structured:0.5", 0),
    ("digits_cnn", "structured:0.5", 3), ("digits_cnn", "structured:0.7", 3), ("digits_cnn", "unstructured:0.5", 0),
    ("resnet18", "structured:0.3", 0), ("resnet18", "structured:0.5", 0),
]


def bench_pruning() -> dict[str, Any]:
    """Pruning ratio vs parameters, MACs, latency (PyTorch source and its ONNX artifact) and accuracy."""
    results = {}
    for model, prune, epochs in PRUNING:
        spec = MODELS[model]
        label = f"{model} {prune}" + (f" +{epochs} epochs" if epochs else "")
        out = OUT / "pruning" / label.replace(" ", "_").replace(":", "-").replace("+", "")
        cmd = [*CONVCLI, "convert", spec["model"], "--to", "onnx", "-o", out, "--prune", prune,
               "--batch", spec["batches"], "--runs", "20", "--samples", "16"]
        if spec.get("weights"):
            cmd += ["--weights", spec["weights"], "--validation", ROOT / "calibration_data/digits/val"]
        if epochs:
            cmd += ["--train", ROOT / "calibration_data/digits/train", "--finetune-epochs", str(epochs)]
        code, seconds, log = run(cmd)
        with (OUT / "pruning.log").open("a") as fh:
            fh.write(log)
        report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
        results[label] = {"exit": code, "seconds": seconds, "report": report}
        print(f"pruning {label}: exit {code} in {seconds:.0f}s", flush=True)
    return results


def pruning_markdown(results: dict[str, Any]) -> str:
    lines = ["## Pruning: ratio vs size, latency and accuracy", "",
             "`convcli convert MODEL --to onnx --prune METHOD:RATIO [--train DIR --finetune-epochs N]`. Before and "
             "after are measured side by side in one run (same data, same threads, p50 at batch 1). Structured "
             "pruning removes channels (torch-pruning); unstructured zeroes weights and keeps dense shapes, so no "
             "runtime here gets faster from it (expected). Accuracy on the digits validation split (ResNet-18 has "
             "random weights: latency only).", "",
             "| model | pruning | params | MACs | PyTorch p50 ms before -> after | ONNX p50 ms (pruned) | "
             "accuracy before -> after (ONNX) | exit |", "|---|---|---|---|---|---|---|---|"]
    for label, res in results.items():
        report = res["report"]
        model, _, prune = label.partition(" ")
        if report is None or not report["source"].get("pruning"):
            lines.append(f"| {model} | {prune} | - | - | - | - | - | {res['exit']} (no report) |")
            continue
        p = report["source"]["pruning"]
        onnx = next((a for a in report["artifacts"] if a["format"] == "onnx"), {})

        def ratio(key: str, p: dict[str, Any] = p) -> str:
            a, b = p.get(f"{key}_before"), p.get(f"{key}_after")
            return f"{b / a:.2f}x" if a and b else "-"

        acc_b, acc_a = p["before"].get("accuracy"), p["after"].get("accuracy")
        acc = "-"
        if acc_b is not None and acc_a is not None:
            acc = f"{acc_b * 100:.2f}% -> {acc_a * 100:.2f}% ({(onnx.get('accuracy') or 0) * 100:.2f}%)"
        lines.append(f"| {model} | {prune} | {ratio('params')} | {ratio('macs')} | "
                     f"{fmt_ms(p['before'].get('latency_ms'))} -> {fmt_ms(p['after'].get('latency_ms'))} | "
                     f"{fmt_ms(onnx.get('latency_ms'))} | {acc} | {res['exit']} |")
    return "\n".join(lines) + "\n"


# -- cache and overhead ---------------------------------------------------------------------------------

def bench_cache(repeats: int = 3) -> dict[str, Any]:
    """Whole-process wall time of `convcli run recipes/quickstart.yaml`: cold (empty cache) vs cached re-run."""
    cold, warm = [], []
    for i in range(repeats):
        cache = tempfile.mkdtemp(prefix="convcli-cache-")
        env = {**os.environ, "CONVCLI_CACHE_DIR": cache}
        out = OUT / f"cache-{i}"
        cmd = [*CONVCLI, "run", str(ROOT / "recipes/quickstart.yaml"), "-o", str(out)]
        t0 = time.perf_counter()
        first = subprocess.run(cmd, capture_output=True, text=True, env=env)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        second = subprocess.run(cmd, capture_output=True, text=True, env=env)
        warm.append(time.perf_counter() - t0)
        print(f"cache run {i}: cold {cold[-1]:.1f}s (exit {first.returncode}), cached {warm[-1]:.1f}s "
              f"(exit {second.returncode})", flush=True)
    return {"cold": cold, "cached": warm}


def bench_overhead(repeats: int = 3) -> dict[str, Any]:
    """convcli convert --to onnx vs the same backends called directly (export, onnxslim, ORT check)."""
    direct = ROOT / "bench" / "direct_onnx.py"
    t_direct, t_cli = [], []
    for _ in range(repeats):
        code, seconds, log = run([sys.executable, direct])
        assert code == 0, log
        t_direct.append(seconds)
        code, seconds, log = run([*CONVCLI, "convert", DIGITS, "--weights", ROOT / "recipes/models/digits_cnn.pt",
                                  "--to", "onnx", "-o", OUT / "overhead", "--no-latency"])
        assert code == 0, log
        t_cli.append(seconds)
    return {"direct": t_direct, "convcli": t_cli}


def cache_markdown(res: dict[str, Any], over: dict[str, Any] | None) -> str:
    cold, warm = statistics.median(res["cold"]), statistics.median(res["cached"])
    lines = ["## Cache: cold run vs cached re-run of recipes/quickstart.yaml", "",
             "Whole-process wall time of `convcli run recipes/quickstart.yaml` (every target and precision of the "
             "digits CNN, JSON/Markdown/HTML/JUnit reports), empty cache then the same command again.", "",
             "| run | median s | runs (s) |", "|---|---|---|",
             f"| cold | {cold:.1f} | {', '.join(f'{x:.1f}' for x in res['cold'])} |",
             f"| cached | {warm:.1f} | {', '.join(f'{x:.1f}' for x in res['cached'])} |", "",
             f"Cached re-run: **{cold / warm:.1f}x faster** (median over median).", ""]
    if over:
        d, c = statistics.median(over["direct"]), statistics.median(over["convcli"])
        lines += ["## convcli overhead over calling the backends directly", "",
                  "Digits CNN to ONNX: `bench/direct_onnx.py` (torch.onnx.export dynamo + onnxslim + one ONNX Runtime "
                  "check, no report) vs `convcli convert ... --to onnx --no-latency` (the same, plus the dynamic-size "
                  "check, parity on 16 samples, accuracy-free report, manifest), whole process, empty cache.", "",
                  "| | median s | runs (s) |", "|---|---|---|",
                  f"| direct | {d:.1f} | {', '.join(f'{x:.1f}' for x in over['direct'])} |",
                  f"| convcli | {c:.1f} | {', '.join(f'{x:.1f}' for x in over['convcli'])} |", "",
                  f"Overhead: {c - d:+.1f} s ({(c / d - 1) * 100:+.0f}%).", ""]
    return "\n".join(lines)


def machine() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        flags = next(ln for ln in text.splitlines() if ln.startswith("flags"))
        wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")
                  if f" {f}" in flags]
    except (OSError, StopIteration):
        model, wanted = platform.processor(), []
    flags_text = ", ".join(wanted) or "n/a"
    return f"{model}, {os.cpu_count()} cores, CPU flags: {flags_text}; Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["models", "byhand", "pruning", "coverage", "cache", "overhead"],
                        action="append")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--byhand-models", default=",".join(BYHAND))
    parser.add_argument("--render", action="store_true", help="Only rewrite docs/benchmarks.md from "
                                                               "bench/out/results.json and bench/NOTES.md.")
    args = parser.parse_args()
    sections = [] if args.render else args.only or ["models", "byhand", "pruning", "coverage", "cache", "overhead"]
    OUT.mkdir(parents=True, exist_ok=True)
    state_path = OUT / "results.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    if "models" in sections:
        state["models"] = {**state.get("models", {}), **bench_models(args.models.split(","))}
        state["machine"] = machine()
    if "byhand" in sections:
        state["byhand"] = {**state.get("byhand", {}), **bench_byhand(args.byhand_models.split(","))}
        state["byhand_machine"] = machine()
    if "pruning" in sections:
        state["pruning"] = bench_pruning()
    state.pop("coverage", None)  # earlier runs kept coverage here; bench/coverage.py keeps its own results
    if "coverage" in sections:  # one implementation: bench/coverage.py, resumable, writes docs/coverage.md
        from bench.coverage import main as coverage_main

        coverage_main(["--one-per-family", "-O", "tflite.timeout_s=300"])
    if "cache" in sections:
        state["cache"] = bench_cache()
    if "overhead" in sections:
        state["overhead"] = bench_overhead()
    write(state)


def earlier_sections() -> dict[str, str]:
    """The sections of the committed docs/benchmarks.md by heading: a section this run did not measure keeps
    an earlier run's table (bench/out/ is not committed, so results.json may not hold it)."""
    if not DOC.exists():
        return {}
    chunks = DOC.read_text().split("\n## ")[1:]
    return {c.split("\n", 1)[0]: "## " + c.rstrip() + "\n" for c in chunks}


def write(state: dict[str, Any]) -> None:
    earlier = earlier_sections()

    def carried(prefix: str) -> list[str]:  # an earlier run's section(s), not re-measured this time
        return [text for head, text in earlier.items() if head.startswith(prefix)]

    header_machine = state.get("machine")
    if "models" not in state and DOC.exists() and " on " in DOC.read_text():  # keep the header's own machine
        header_machine = DOC.read_text().split(" on ", 1)[1].split(". This machine", 1)[0]
    state["machine"] = header_machine or machine()
    (OUT / "results.json").write_text(json.dumps(state, indent=1))
    parts = ["# Benchmarks", "",
             f"Measured with `make bench` (`bench/run_bench.py`) on {state['machine']}. This machine is shared and "
             "noisy: read ratios measured side by side in one run, not absolute numbers. Random weights for the "
             "torchvision, Keras MobileNetV2 and transformer models (BatchNorm statistics re-estimated so that "
             "activations keep a trained model's scale; parity and latency only, calibration on random images); "
             "the digits CNN is trained (accuracy on its 360-image validation split). `*` marks the fastest "
             "artifact that passed its checks. A section measured on another machine says so in its own header.",
             ""]
    parts += [models_markdown(state["models"])] if "models" in state else carried("Reference models")
    if "byhand" in state:
        parts.append(byhand_markdown(state["byhand"], state.get("byhand_machine") or machine()))
    else:
        parts += carried("Fastest passing artifact")
    parts += [pruning_markdown(state["pruning"])] if "pruning" in state else carried("Pruning")
    if "cache" in state:
        parts.append(cache_markdown(state["cache"], state.get("overhead")))
    else:
        parts += carried("Cache") + carried("convcli overhead")
    parts.append(COVERAGE_POINTER)
    tflite_paths = ROOT / "bench" / "tflite_paths.md"  # measured by bench/tflite_paths.py on its own
    if tflite_paths.exists():
        parts.append(tflite_paths.read_text().rstrip() + "\n")
    transformer_int8 = ROOT / "bench" / "transformer_int8.md"  # measured by bench/transformer_int8.py on its own
    if transformer_int8.exists():
        parts.append(transformer_int8.read_text().rstrip() + "\n")
    notes = ROOT / "bench" / "NOTES.md"  # what the numbers mean, written by hand after a run
    if notes.exists():
        parts.insert(4, notes.read_text().rstrip() + "\n")
    DOC.write_text("\n".join(parts) + "\n")
    print(f"wrote {DOC}")

if __name__ == "__main__":
    main()
