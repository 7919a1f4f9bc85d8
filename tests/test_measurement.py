"""Measurements that are like for like: exporters leave PyTorch's globals as they found them, models are timed
together in round-robin rounds, every number says where it was measured, and speed flags ignore noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from convcli.converters.torch_globals import torch_export_globals
from convcli.core.artifact import Artifact
from convcli.core.registry import default_registry
from convcli.core.runner import Session
from convcli.core.tensors import parse_input_spec
from convcli.parity.data import DataSet
from convcli.parity.evaluate import EvalSettings, time_sessions
from convcli.parity.latency import SETTLE, slice_size

# --- exporters restore PyTorch's process-wide switches ---------------------------------------------------------


def test_onnx_export_of_a_transformer_restores_the_mha_fast_path(cli, catalogue, tmp_path: Path) -> None:
    """Exporting used to switch the fast path off for good, so the source was timed on its slow path only on
    runs that exported (uncached), inflating speedups."""
    torch.backends.mha.set_fastpath_enabled(True)
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "onnx", "-o", tmp_path / "out",
              "--no-latency", "--threads", "2")
    assert res.exit_code == 0, res.output
    assert res.report(tmp_path / "out")["steps"][0]["name"] == "OnnxFromPytorch"
    assert torch.backends.mha.get_fastpath_enabled() is True
    assert torch.is_grad_enabled() is grad and torch.get_num_threads() == threads


def test_export_globals_restore_whatever_was_set_before() -> None:
    before = torch.get_num_threads()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch_export_globals():
            torch.set_num_threads(1)
            torch.set_grad_enabled(False)
            assert torch.backends.mha.get_fastpath_enabled() is False
        assert torch.backends.mha.get_fastpath_enabled() is False  # restored, not forced on
        assert torch.is_grad_enabled() and torch.get_num_threads() == before
        torch.backends.mha.set_fastpath_enabled(True)
        with pytest.raises(RuntimeError), torch_export_globals():
            assert torch.backends.mha.get_fastpath_enabled() is False
            raise RuntimeError("the exporter failed")
        assert torch.backends.mha.get_fastpath_enabled() is True
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        torch.set_num_threads(before)


# --- interleaved timing ------------------------------------------------------------------------------------------


def _onnx_model(path: Path, op: str) -> Path:
    """y = x <op> x: a real ONNX model with a dynamic batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node(op, ["x", "x"], ["y"])], op.lower(), [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class Recorded(Session):
    """A real session that writes (name, batch) into a shared log on every call: the order runtimes ran in."""

    def __init__(self, inner: Session, name: str, log: list[tuple[str, int]], fail_after: int | None = None) -> None:
        self.inner, self.name, self.log, self.fail_after = inner, name, log, fail_after

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.log.append((self.name, next(iter(feed.values())).shape[0]))
        if self.fail_after is not None and sum(n == self.name for n, _ in self.log) > self.fail_after:
            raise RuntimeError("the runtime crashed")
        return self.inner(feed)


def _ort_sessions(tmp_path: Path, log: list[tuple[str, int]], fail_b_after: int | None = None) -> dict[str, Session]:
    runner = default_registry().runner_for("onnx")
    assert runner is not None
    specs = [parse_input_spec("x:batch=2x4:float32")]
    sessions: dict[str, Session] = {}
    for name, op in (("a", "Add"), ("b", "Mul")):
        inner = runner().load(Artifact("onnx", _onnx_model(tmp_path / f"{name}.onnx", op), specs, ["y"]), 1)
        sessions[name] = Recorded(inner, name, log, fail_b_after if name == "b" else None)
    return sessions


def _data() -> DataSet:
    return DataSet({"x": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)}, None, "random")


def test_sessions_are_timed_in_round_robin_rounds(tmp_path: Path) -> None:
    """Each round runs every model a slice at every batch, so a load spike lands on all of them; warm-up, runs
    and the per-model budget are as if each were timed alone."""
    log: list[tuple[str, int]] = []
    settings = EvalSettings(threads=1, parity_batch=2, latency_batches=[1, 2], warmup=2, runs=6, max_seconds=60)
    got = time_sessions(_ort_sessions(tmp_path, log), _data(), settings, lambda k, e: pytest.fail(f"{k}: {e}"))
    order = [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    warm = [c for c in order for _ in range(settings.warmup)]
    n = slice_size(settings.runs)
    rounds = settings.runs // n
    assert rounds >= 3, "the test needs several rounds"
    expected = warm + [c for _ in range(rounds) for c in order for _ in range(SETTLE + n)]
    assert log == expected
    for name in ("a", "b"):
        assert {b: s.runs for b, s in got[name].items()} == {1: 6, 2: 6}
        for s in got[name].values():
            assert s.p25 is not None and s.p75 is not None and s.p25 <= s.p50 <= s.p75


def test_a_session_that_fails_while_timed_is_dropped_and_the_others_finish(tmp_path: Path) -> None:
    log: list[tuple[str, int]] = []
    errors: list[str] = []
    settings = EvalSettings(threads=1, parity_batch=2, latency_batches=[1], warmup=1, runs=6, max_seconds=60)
    got = time_sessions(_ort_sessions(tmp_path, log, fail_b_after=4), _data(), settings,
                        lambda k, e: errors.append(f"{k}: {e}"))
    assert errors == ["b: the runtime crashed"]
    assert set(got) == {"a"} and got["a"][1].runs == 6
