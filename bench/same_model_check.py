"""Is a gap between convcli's OpenVINO int8 pick and the by-hand NNCF int8 row real? Time only copies of that one
model, interleaved: convcli's IR file twice, the by-hand NNCF model in memory, and saved and reloaded.

    PYTHONPATH=. .venv/bin/python bench/same_model_check.py minilm bench/out/byhand/minilm-convcli \
        calibration_data/sentences/calib.npz

Run after `run_bench.py --only byhand`; used for the note under the MiniLM table (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import by_hand as bh  # noqa: E402  (its import applies convcli's offline switches first)


def main() -> None:
    import openvino as ov

    from convcli.parity.latency import Timer, time_round_robin

    name, convcli_dir, calibration = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    batch, runs = 8, 80
    model, inputs, _ = bh.source(name)
    loaded = np.load(calibration)
    calib = {next(iter(inputs)): loaded} if isinstance(loaded, np.ndarray) else dict(loaded)
    ir_file = str(convcli_dir / "openvino-int8" / "model.xml")
    with tempfile.TemporaryDirectory() as tmp:
        bh.export_onnx(model, inputs, Path(tmp) / "fp32.onnx")
        quantized = bh.nncf_int8(ov.convert_model(str(Path(tmp) / "fp32.onnx")), calib, name != "resnet18")
        ov.save_model(quantized, str(Path(tmp) / "q.xml"))
        runs_by = {"convcli IR file": bh.ov_compile(ir_file, "f32")[0],
                   "by-hand NNCF, in memory": bh.ov_compile(quantized, "f32")[0],
                   "by-hand NNCF, saved and reloaded": bh.ov_compile(str(Path(tmp) / "q.xml"), "f32")[0],
                   "convcli IR file again": bh.ov_compile(ir_file, "f32")[0]}
        feed = {k: v[:batch] for k, v in inputs.items()}
        timers = {k: Timer(lambda r=r: r(feed), batch, runs, 30.0) for k, r in runs_by.items()}
        got = time_round_robin(timers, 3, runs, lambda k, e: print(k, e))
        for key, st in got.items():
            print(f"{key}: b={batch} p50 {st.p50:.2f} ms (IQR {st.p25:.2f}-{st.p75:.2f}, median +-"
                  f"{st.p50_halfwidth:.2f})")
        for label, path in (("convcli", ir_file), ("by-hand", str(Path(tmp) / "q.xml"))):
            ops = Counter(o.get_type_name() for o in ov.Core().read_model(path).get_ops())
            print(label, dict(ops.most_common(8)))


if __name__ == "__main__":
    main()
