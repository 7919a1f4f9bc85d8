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
from convcli.job.evaluation import machine_fingerprint
from convcli.job.judge import flag_speed, judge
from convcli.parity.data import DataSet
from convcli.parity.evaluate import EvalSettings, time_sessions
from convcli.parity.latency import SETTLE, LatencyStats, slice_size
from convcli.recipes.schema import GateSpec
from convcli.reports.junit import render_junit
from convcli.reports.markdown import render_markdown
from convcli.reports.model import ArtifactReport, Measured, Report, SourceReport
from tests.conftest import FAST

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


# --- the flagging rule -------------------------------------------------------------------------------------------


def _stats(p50: float, spread: float | None, runs: int = 30) -> LatencyStats:
    """Synthetic latency: p25/p75 at p50 -/+ spread/2 (None: a number cached before spreads were recorded)."""
    half = None if spread is None else spread / 2
    return LatencyStats(p50=p50, p90=p50, p99=p50, mean=p50, throughput=1000 / p50, batch=1, runs=runs,
                        p25=None if half is None else p50 - half, p75=None if half is None else p50 + half)


def _row(p50: float, spread: float | None, src: LatencyStats | None, precision: str = "fp32",
         run: str = "r1") -> ArtifactReport:
    row = ArtifactReport(id=f"onnx-{precision}", format="onnx", precision=precision, status="passed",
                         latency_ms=_stats(p50, spread), source_latency_ms=src,
                         measured=Measured(run_id=run, at="2026-01-01T00:00:00+00:00", machine="m"))
    row.speedup_vs_source = src.p50 / p50 if src else None
    return row


def test_a_slowdown_within_noise_is_not_flagged() -> None:
    """0.030 vs 0.034 ms: past the 10% margin, but the runs spread over 0.02 ms, so it is noise."""
    row = _row(0.034, 0.02, _stats(0.030, 0.02))
    flag_speed([row])
    assert row.flags == [] and row.speed_within_noise is True


def test_a_clear_slowdown_is_flagged() -> None:
    row = _row(2.0, 0.05, _stats(1.0, 0.05))
    flag_speed([row])
    assert row.flags == ["slower than the source (0.50x)"] and row.speed_within_noise is False


def test_a_difference_beyond_the_spread_but_under_the_margin_is_not_flagged() -> None:
    row = _row(1.05, 0.001, _stats(1.0, 0.001))
    flag_speed([row])
    assert row.flags == [] and row.speed_within_noise is False


def test_numbers_without_a_recorded_spread_fall_back_to_the_margin() -> None:
    row = _row(1.2, None, _stats(1.0, None))
    flag_speed([row])
    assert row.flags == ["slower than the source (0.83x)"] and row.speed_within_noise is False


def test_without_a_source_pair_there_is_no_speedup_and_no_source_flag() -> None:
    row = _row(5.0, 0.0, None)
    judge(row, _source(_stats(1.0, 0.0)), GateSpec(min_speedup=2.0))
    flag_speed([row])
    assert row.speedup_vs_source is None and row.speed_within_noise is None and row.flags == []
    # No speedup is made up from unpaired numbers; the min_speedup gate the user set then fails, never passes unseen.
    assert row.failures == ["gate min_speedup is set but there is nothing to judge it on (no source latency timed "
                            "with it)"]


def _source(latency: LatencyStats) -> SourceReport:
    return SourceReport(spec="m.py:build", format="pytorch", inputs=[], outputs=[], latency_ms=latency)


def test_an_int8_sibling_is_compared_only_with_numbers_from_the_same_run() -> None:
    src = _stats(10.0, 0.1)
    fp32 = _row(1.0, 0.01, src)
    int8_same = _row(2.0, 0.01, src, "int8")
    flag_speed([fp32, int8_same])
    assert int8_same.flags == ["slower than onnx-fp32 (2.00 vs 1.00 ms)"]
    int8_other = _row(2.0, 0.01, src, "int8", run="r0")
    flag_speed([_row(1.0, 0.01, src), int8_other])
    assert int8_other.flags == []
    int8_noisy = _row(1.3, 2.0, src, "int8")
    flag_speed([_row(1.0, 0.01, src), int8_noisy])
    assert int8_noisy.flags == []


# --- provenance: every number says where it was measured, speedups divide pairs from the same rounds ------------


def test_cached_rows_keep_their_own_pair_and_say_which_run(cli, catalogue, tmp_path: Path) -> None:
    args = [*catalogue["digits_cnn"].args(), *FAST]
    assert cli("convert", *args, "--to", "onnx", "-o", tmp_path / "one").exit_code == 0
    first = Report.model_validate_json((tmp_path / "one" / "report.json").read_text())
    res = cli("convert", *args, "--to", "onnx,openvino", "-o", tmp_path / "two")
    assert res.exit_code == 0, res.output
    second = Report.model_validate_json((tmp_path / "two" / "report.json").read_text())
    assert first.run_id and second.run_id and first.run_id != second.run_id

    onnx_then, = first.artifacts
    onnx_now, ov_now = second.artifacts
    assert onnx_now.cached and onnx_now.measured and onnx_now.measured.run_id == first.run_id
    assert onnx_now.source_latency_ms == onnx_then.source_latency_ms == first.source.latency_ms
    assert onnx_now.latency_ms and onnx_now.source_latency_ms
    assert onnx_now.speedup_vs_source == onnx_then.speedup_vs_source
    assert onnx_now.speedup_vs_source == pytest.approx(onnx_now.source_latency_ms.p50 / onnx_now.latency_ms.p50)
    # the cached source is timed again, in this run's rounds, for the artifact measured now
    assert not ov_now.cached and ov_now.measured and ov_now.measured.run_id == second.run_id
    assert not second.source.cached and second.source.measured and second.source.measured.run_id == second.run_id
    assert ov_now.source_latency_ms == second.source.latency_ms
    assert ov_now.measured.machine == onnx_now.measured.machine == second.settings.machine["fingerprint"]
    assert f"Cached from run {first.run_id}" in render_markdown(second)
    assert f"Cached from run {first.run_id}" in res.output
    assert f"measured in run {first.run_id} (cached)" in render_junit(second)

    assert cli("convert", *args, "--to", "onnx,openvino", "-o", tmp_path / "three").exit_code == 0
    third = Report.model_validate_json((tmp_path / "three" / "report.json").read_text())
    assert third.source.cached and third.source.measured and third.source.measured.run_id == second.run_id
    assert [a.measured.run_id for a in third.artifacts if a.measured] == [first.run_id, second.run_id]


def test_the_machine_fingerprint_covers_cpu_and_threads() -> None:
    info = {"cpu": "Some CPU", "cpu_flags": ["avx2"], "cores": 8}
    assert machine_fingerprint(2, info) == machine_fingerprint(2, dict(info))
    assert machine_fingerprint(2, info) != machine_fingerprint(4, info)
    assert machine_fingerprint(2, info) != machine_fingerprint(2, {**info, "cpu_flags": ["avx2", "avx512f"]})
    assert machine_fingerprint(2, info) != machine_fingerprint(2, {**info, "cpu": "Another CPU"})
