"""bf16 as a precision (OpenVINO's bf16 inference hint, offered only on CPUs with native bf16), ``--precision auto``
and the ``best`` artifact (report.json ``best``, ``OUTDIR/best``, manifest ``best``).

The CPU's answer is read through ``convcli.core.cpu.cpu_info``; tests that need the other answer patch it, so both
paths run on every machine. Only the real bf16 run needs the hardware and is skipped without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convcli import api
from convcli.core import cpu
from convcli.core.cpu import cpu_bf16_support
from convcli.core.planner import TargetRequest, plan, precisions_for
from convcli.core.registry import default_registry
from convcli.job.evaluation import best_artifact, fastest_passed
from convcli.job.source import expand_auto
from convcli.parity.latency import LatencyStats
from convcli.passes.bf16_openvino import HintOpenvinoBf16
from convcli.recipes.schema import JobSpec
from convcli.reports.model import ArtifactReport, Measured
from convcli.runners.openvino_runner import inference_hint
from tests.conftest import FAST
from tests.models.catalogue import DIGITS, ROOT

CALIB = ROOT / "calibration_data/digits/calib"
SOURCE = [DIGITS.spec, "--weights", str(DIGITS.weights)]
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_BF16 = frozenset({*AVX2_ONLY, "avx512f", "avx512_vnni", "avx512_bf16"})
NATIVE, WHY_NOT = cpu_bf16_support()


def _as_cpu(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str], model: str = "AMD EPYC") -> None:
    monkeypatch.setattr(cpu, "cpu_info", lambda: (model, flags))


def _rows(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["artifacts"]}


def test_cpu_bf16_support_both_answers() -> None:
    ok, why = cpu_bf16_support(set(AVX2_ONLY), "AMD EPYC")
    assert not ok
    assert why == "CPU has no native bf16 (needs avx512_bf16 or amx_bf16; this CPU: AMD EPYC with avx2)"
    assert cpu_bf16_support(set(AVX512_BF16), "AMD EPYC") == (True, "native bf16: avx512_bf16")
    assert cpu_bf16_support({"avx2", "amx_bf16", "amx_tile"})[0]
    assert "no vector flags" in cpu_bf16_support(set(), "")[1]


def test_bf16_availability_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planning path itself, with either CPU: planned with the bf16 hint, or kept as unavailable with why."""
    registry = default_registry()
    _as_cpu(monkeypatch, AVX512_BF16)
    the_plan = plan(registry, "pytorch", [TargetRequest("openvino", "bf16"), TargetRequest("openvino", "fp32")])
    bf16 = next(t for t in the_plan.targets if t.request.precision == "bf16")
    assert bf16.unavailable is None
    assert [the_plan.steps[s].step.name for s in bf16.chain] == [
        "OnnxFromPytorch", "SimplifyOnnx", "OpenvinoFromOnnx", "HintOpenvinoBf16"]
    fp32 = next(t for t in the_plan.targets if t.request.precision == "fp32")
    assert bf16.chain[:-1] == fp32.chain  # the bf16 IR is the fp32 IR with the hint: the prefix is shared
    assert the_plan.steps[bf16.chain[-1]].step.output_precision == "bf16"
    assert inference_hint("bf16") == "bf16" and inference_hint("fp32") == inference_hint("fp16") == "f32"

    _as_cpu(monkeypatch, AVX2_ONLY)
    assert not HintOpenvinoBf16.availability().available
    the_plan = plan(registry, "pytorch", [TargetRequest("openvino", "bf16")])
    (target,) = the_plan.targets
    assert target.final_step is None and not the_plan.steps  # nothing is built for it
    assert "HintOpenvinoBf16: CPU has no native bf16 (needs avx512_bf16 or amx_bf16" in (target.unavailable or "")
    assert "AMD EPYC with avx2" in (target.unavailable or "")


def test_auto_expands_per_target_and_the_schema_knows_it() -> None:
    registry = default_registry()
    assert precisions_for(registry, "openvino") == ("fp32", "fp16", "bf16", "int8")
    assert "bf16" not in precisions_for(registry, "onnx")  # ONNX Runtime's CPU provider has no bf16 kernels
    spec = JobSpec.model_validate({"source": {"model": DIGITS.spec},
                                   "targets": [{"format": "openvino", "precisions": "auto"},
                                               {"format": "onnx", "precisions": ["auto"]},
                                               {"format": "tflite", "precisions": ["fp16"]}]})
    assert spec.targets[0].precisions == ["auto"]
    expanded, note = expand_auto(registry, spec)
    assert [t.precisions for t in expanded.targets] == [["fp32", "fp16", "bf16"], ["fp32", "fp16"], ["fp16"]]
    assert note is not None and "left out int8 (no calibration data" in note
    with_calib = spec.model_copy(update={"data": spec.data.model_copy(update={"calibration": CALIB})})
    expanded, note = expand_auto(registry, with_calib)
    assert expanded.targets[0].precisions == ["fp32", "fp16", "bf16", "int8"]
    assert note is not None and "left out" not in note
    assert expand_auto(registry, expanded) == (expanded, None)
    from convcli.cli.run import _apply_overrides

    picked = spec.model_copy(deep=True)
    _apply_overrides(picked, ["openvino-bf16,onnx"], False, None, None)  # --only picks from what auto becomes
    assert [(t.format, t.precisions) for t in picked.targets] == [("openvino", ["bf16"]), ("onnx", ["auto"])]
    schema = json.loads((ROOT / "docs/recipe-schema.json").read_text())
    assert {"const": "auto", "type": "string"} in schema["$defs"]["OpenvinoTarget"]["properties"]["precisions"]["anyOf"]


def _row(rid: str, status: str, p50: float | None, spread: float = 0.01, run: str = "r1") -> ArtifactReport:
    def lat(v: float) -> LatencyStats:
        return LatencyStats(p50=v, p90=v, p99=v, mean=v, throughput=1e3 / v, batch=1, runs=30,
                            p25=v - spread, p75=v + spread)

    fmt, prec = rid.split("-")
    return ArtifactReport(id=rid, format=fmt, precision=prec, status=status,  # type: ignore[arg-type]
                          path=f"{rid}/model.xml", latency_ms=lat(p50) if p50 else None,
                          source_latency_ms=lat(1.0) if p50 else None, speedup_vs_source=1.0 / p50 if p50 else None,
                          measured=Measured(run_id=run, at="", machine="m") if p50 else None)


def test_best_is_the_fastest_passed_row_and_says_why() -> None:
    rows = [_row("openvino-fp32", "passed", 0.5), _row("openvino-bf16", "passed", 0.2),
            _row("openvino-int8", "failed", 0.1), _row("openvino-fp16", "unavailable", None)]
    best = best_artifact(rows, fastest_passed(rows))
    assert best is not None and best.id == "openvino-bf16" and best.folder == "openvino-bf16"  # never the failed int8
    assert best.speedup == 5.0 and best.p50_ms == 0.2 and best.path == "openvino-bf16/model.xml"
    assert best.why.startswith("fastest of 2 passed artifacts (5.00x the source, p50 0.200 ms), ranked by speedup")
    close = [_row("openvino-fp32", "passed", 0.21, spread=0.05), _row("openvino-bf16", "passed", 0.2, spread=0.05)]
    best = best_artifact(close, fastest_passed(close))
    assert best is not None and "within noise of openvino-fp32" in best.why
    only = [_row("openvino-fp32", "passed", 0.5), _row("openvino-bf16", "failed", 0.2)]
    best = best_artifact(only, fastest_passed(only))
    assert best is not None and best.id == "openvino-fp32" and best.why == "the only artifact that passed"
    two_batches = [_row("openvino-fp32", "passed", 0.5), _row("openvino-bf16", "passed", 0.2)]
    for r in two_batches:
        assert r.latency_ms is not None
        r.latency_by_batch = {"1": r.latency_ms, "8": r.latency_ms}
    best = best_artifact(two_batches, fastest_passed(two_batches))
    assert best is not None and best.why.endswith("at batch 1 (the first of --batch 1,8)"), best
    untimed = [_row("openvino-fp16", "failed", None), _row("openvino-fp32", "passed", None)]
    best = best_artifact(untimed, fastest_passed(untimed))
    assert best is not None and best.id == "openvino-fp32" and best.why.startswith("latency not measured")
    assert best_artifact([_row("openvino-fp32", "failed", 0.5)], None) is None


def test_auto_on_a_cpu_without_bf16_and_best_link(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--precision auto on an AVX2-only CPU: fp32/fp16 pass, bf16 is unavailable naming the missing flags, int8
    is left out (and said) without calibration and built with it; OUTDIR/best follows the fastest passed row and
    is removed by a run in which nothing passes."""
    _as_cpu(monkeypatch, AVX2_ONLY)
    out = tmp_path / "out"
    res = cli("convert", *SOURCE, "--to", "openvino", "--precision", "auto", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = _rows(report)
    assert list(rows) == ["openvino-fp32", "openvino-fp16", "openvino-bf16"]
    assert rows["openvino-fp32"]["status"] == rows["openvino-fp16"]["status"] == "passed"
    bf16 = rows["openvino-bf16"]
    assert bf16["status"] == "unavailable"
    assert "CPU has no native bf16 (needs avx512_bf16 or amx_bf16; this CPU: AMD EPYC with avx2)" in bf16["error"]
    assert "left out int8 (no calibration data" in report["settings"]["precision_auto"]
    assert "left out int8" in " ".join(res.output.split())

    res = cli("convert", *SOURCE, "--to", "openvino", "--precision", "auto", "--calibration", CALIB,
              "-O", "QuantizeOpenvinoInt8.subset_size=16", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = _rows(report)
    assert list(rows) == ["openvino-fp32", "openvino-fp16", "openvino-bf16", "openvino-int8"]
    assert rows["openvino-int8"]["status"] == "passed", rows["openvino-int8"]
    best = report["best"]
    assert best["id"] == report["fastest_passed"] and rows[best["id"]]["status"] == "passed"
    assert best["path"] == rows[best["id"]]["path"] and best["precision"] == rows[best["id"]]["precision"]
    assert best["speedup"] == rows[best["id"]]["speedup_vs_source"] and "passed artifacts" in best["why"]
    link = out / "best"
    assert best["link"] == "best" and link.is_symlink()
    assert Path(link.readlink()) == Path(best["id"])  # relative: OUTDIR can be moved
    assert (link / "model.xml").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["best"] == {"id": best["id"], "path": best["path"], "folder": best["id"], "link": "best"}
    assert f"best: {best['id']}" in " ".join(res.output.split())

    # Nothing passes (an impossible latency gate): no best, and the earlier link goes.
    failed = api.convert(DIGITS.spec, to="openvino", weights=DIGITS.weights, output=out, runs=3, threads=2,
                         gates={"max_p50_ms": 1e-9})
    assert failed.exit_code == 1 and failed.written.best_artifact is None
    assert json.loads((out / "report.json").read_text())["best"] is None
    assert not link.exists() and not link.is_symlink()
    assert json.loads((out / "manifest.json").read_text())["best"] is None


@pytest.mark.skipif(not NATIVE, reason=f"the real bf16 run needs a CPU with native bf16: {WHY_NOT}")
def test_bf16_row_runs_natively(cli, tmp_path: Path) -> None:
    """On a CPU with avx512_bf16/amx_bf16: the bf16 row compiles with bf16 inference (read back from the compiled
    model), passes the bf16 tolerance, and the IR carries the hint for whoever deploys it."""
    import openvino as ov

    out = tmp_path / "out"
    res = cli("convert", *SOURCE, "--to", "openvino:bf16", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "passed" and row["precision"] == "bf16", row
    assert "inference precision bf16" in row["runner"]
    assert row["parity"]["tolerance"]["min_cosine"] == 0.995
    compiled = ov.Core().compile_model(str(out / "openvino-bf16/model.xml"), "CPU")  # no config: the IR's hint
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
