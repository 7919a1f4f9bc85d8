"""No outbound connections: ONNX Runtime's OneDs telemetry is switched off by convcli's offline settings.

ORT 1.32 uploads telemetry from a background thread of a process that holds a session for a few seconds
(DNS lookups of mobile.events.data.microsoft.com, seen with strace during a TFLite conversion). The check runs
one child with convcli's settings and one without, side by side, under strace, and counts DNS connects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.catalogue import ROOT

CHILD = """
import sys, time
if sys.argv[1] == "convcli":
    from convcli.core.offline import apply_offline_env
    apply_offline_env()
import onnx, onnxruntime as ort
from onnx import TensorProto, helper
x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])
y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])
g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', [x], [y])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), sys.argv[2])
session = ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])
time.sleep(15)
"""


def _dns_connects(trace: Path) -> int:
    return sum("htons(53)" in line for line in trace.read_text().splitlines())


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed: cannot watch connections")
def test_onnxruntime_telemetry_is_off_under_convcli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    procs = {}
    for mode in ("convcli", "plain"):
        trace = tmp_path / f"{mode}.strace"
        procs[mode] = (trace, subprocess.Popen(
            ["strace", "-f", "-e", "trace=connect", "-o", str(trace), sys.executable, "-c", CHILD, mode,
             str(tmp_path / f"{mode}.onnx")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for mode, (_trace, proc) in procs.items():
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0 and b"ptrace" in err:
            pytest.skip(f"strace cannot trace here: {err.decode()[-200:]}")
        assert proc.returncode == 0, (mode, err.decode()[-2000:])
    plain = _dns_connects(procs["plain"][0])
    if plain == 0:
        pytest.skip("ONNX Runtime made no DNS lookup here even without the switch (no resolver?): nothing to check")
    assert _dns_connects(procs["convcli"][0]) == 0, "ONNX Runtime telemetry looked up its host under convcli"
