"""Child-process isolation: real children that segfault, abort, hang or fail become one-line
ConversionErrors, and a crashing backend fails only its own target in a convcli run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convcli.converters.torch_to_ncnn import pnnx_binary
from convcli.core.errors import ConversionError
from convcli.core.isolation import run_python, run_tool


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConversionError) as info:
        fn(*args, **kwargs)
    line = info.value.one_line()
    assert "\n" not in line
    return line


def test_segfault_is_reported_with_its_signal() -> None:
    line = _error(run_python, "import ctypes; print('before the crash', flush=True); ctypes.string_at(0)",
                  "segfaulting child")
    assert line.startswith("segfaulting child crashed (SIGSEGV): before the crash"), line


def test_abort_is_reported_with_its_signal() -> None:
    line = _error(run_python, "import os, sys; sys.stderr.write('about to abort\\n'); os.abort()", "aborting child")
    assert line.startswith("aborting child crashed (SIGABRT): about to abort"), line


def test_hang_is_stopped_at_the_timeout() -> None:
    start = time.monotonic()
    line = _error(run_python, "import time; time.sleep(60)", "hanging child", timeout_s=1)
    assert time.monotonic() - start < 15
    assert line.startswith("hanging child did not finish within 1 s and was stopped"), line
    assert "timeout_s" in line  # the hint says what to raise


def test_non_zero_exit_quotes_the_last_lines() -> None:
    code = "import sys; print('step 1'); print('step 2'); sys.stderr.write('bad input shape\\n'); sys.exit(3)"
    line = _error(run_python, code, "failing child")
    assert line.startswith("failing child failed (exit 3): bad input shape | step 1 | step 2"), line
    # check=False: the exit status is the caller's to judge, but a signal is still an error
    proc = run_python(code, "failing child", check=False)
    assert proc.returncode == 3 and "step 2" in proc.stdout
    assert "SIGSEGV" in _error(run_python, "import ctypes; ctypes.string_at(0)", "child", check=False)


def test_success_returns_the_output_and_missing_program_is_an_error(tmp_path: Path) -> None:
    proc = run_python("import os; print(os.getcwd(), os.environ['CONVCLI_TEST'])", "child", cwd=tmp_path,
                      env={"CONVCLI_TEST": "seen"})
    assert proc.stdout.split() == [str(tmp_path), "seen"]
    line = _error(run_tool, [str(tmp_path / "no-such-tool")], "missing tool")
    assert line == f"missing tool: program '{tmp_path / 'no-such-tool'}' not found"


def test_real_pnnx_segfault_is_contained(tmp_path: Path) -> None:
    """pnnx's embedded ONNX Runtime reads ONNX IR <= 13; on an IR 14 file (what onnx 1.23 writes) pnnx
    segfaults. NcnnFromOnnx lowers the IR version in its copy for that reason; here the raw binary crashes."""
    exe = pnnx_binary()
    assert exe is not None
    w = numpy_helper.from_array(np.random.default_rng(0).random((64, 32), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert model.ir_version == 14
    onnx.save(model, str(tmp_path / "mm.onnx"))
    line = _error(run_tool, [str(exe), "mm.onnx", "inputshape=[1,64]f32"], "pnnx", cwd=tmp_path, timeout_s=120)
    assert line.startswith("pnnx crashed (SIGSEGV):"), line
    assert not (tmp_path / "mm.ncnn.param").exists()


def test_crashing_ncnn_step_fails_only_its_target(cli, catalogue, tmp_path: Path) -> None:
    """pnnx segfaults converting the tiny transformer's ONNX with a dynamic sequence length (in its
    fold_constants_dynamic_shape pass): the ncnn row is an error, the ONNX row still passes."""
    out = tmp_path / "out"
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "onnx,ncnn@NcnnFromOnnx", "-o", out,
              "--no-latency", "--threads", "2")
    assert res.exit_code == 3, res.output
    report = res.report(out)
    assert report["exit_code"] == 3
    rows = {r["id"]: r for r in report["artifacts"]}
    assert rows["onnx-fp32"]["status"] == "passed"
    ncnn = rows["ncnn-fp32@NcnnFromOnnx"]
    assert ncnn["status"] == "error" and "\n" not in ncnn["error"]
    assert ncnn["error"].startswith("NcnnFromOnnx failed after OnnxFromPytorch, SimplifyOnnx: pnnx (NcnnFromOnnx, "
                                    "onnx -> ncnn) crashed (SIGSEGV)"), ncnn["error"]
    assert "seq" in ncnn["error"] and "onnxruntime" not in ncnn["error"]
    steps = {s["name"]: s["status"] for s in report["steps"]}
    assert steps == {"OnnxFromPytorch": "ok", "SimplifyOnnx": "ok", "NcnnFromOnnx": "error"}
    assert sorted(p.name for p in out.iterdir()) == ["best", "manifest.json", "onnx-fp32", "report.json"]
    assert (out / "best").resolve() == (out / "onnx-fp32").resolve()  # the one passed row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "temporary folders left behind"
    assert "ncnn" not in (out / "manifest.json").read_text().split('"outputs_sha256"')[1]
