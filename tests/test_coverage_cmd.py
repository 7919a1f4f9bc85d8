"""bench/coverage.py: zoo files, shards, resuming, the table. The runs are real `convcli convert` subprocesses of
tiny models (seconds each); the torchvision zoo is checked as a file, never converted here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from bench import coverage
from convcli.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"family": "tiny", "name": "addcmul", "model": "tests/models/small.py:addcmul",
        "inputs": ["x:batch=2x3x16x16:float32"], "targets": "onnx", "note": "conv + addcmul"}
BROKEN = {"family": "broken", "name": "raises", "model": "tests/models/small.py:raises",
          "inputs": ["x:batch=2x3x16x16:float32"], "targets": "onnx"}


def write_yaml(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return path


def run(*argv: str | Path) -> tuple[int, str]:
    buffer = io.StringIO()
    code = coverage.main([str(a) for a in argv], console=Console(file=buffer, width=300))
    return code, buffer.getvalue()


# -- zoo files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "expected"), [
    ({**TINY, "famly": "x"}, "entry 0 (addcmul): famly: unknown key"),
    ({k: v for k, v in TINY.items() if k != "inputs"}, "entry 0 (addcmul): inputs: required but missing"),
    ({**TINY, "model": "tests/models/small.py"}, "entry 0 (addcmul): model: expected FILE.py:FACTORY"),
    ({**TINY, "model": "tests/models/nope.py:build"}, "model: file tests/models/nope.py does not exist"),
    ({**TINY, "name": "a/b"}, "entry 0 (a/b): name: String should match pattern"),
    ({**TINY, "inputs": "x:1x3"}, "entry 0 (addcmul): inputs: Input should be a valid list"),
])
def test_zoo_entry_errors_name_file_line_entry_and_field(tmp_path: Path, entry: dict, expected: str) -> None:
    zoo = write_yaml(tmp_path / "zoo.yaml", [entry])
    with pytest.raises(InputError) as exc:
        coverage.load_zoo(zoo)
    assert exc.value.message.startswith(f"{zoo}:")
    assert expected in exc.value.message


def test_zoo_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        coverage.load_zoo(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="a zoo is a YAML list"):
        coverage.load_zoo(write_yaml(tmp_path / "map.yaml", TINY))  # type: ignore[arg-type]
    a, b = write_yaml(tmp_path / "a.yaml", [TINY]), write_yaml(tmp_path / "b.yaml", [TINY])
    with pytest.raises(InputError, match=r"'addcmul' is also used in .*a\.yaml"):
        coverage.load_zoos([a, b])
    code, out = run("--zoo", tmp_path / "missing.yaml", "--list")
    assert code == 2 and "error: zoo file" in out


def test_torchvision_zoo_file_is_every_classifier_as_generated() -> None:
    """The committed file is what --write-torchvision-zoo writes with the installed torchvision (regenerate it
    when torchvision adds models), and it loads as a zoo."""
    import torchvision

    written = coverage.load_zoo(coverage.TORCHVISION_ZOO)
    assert written == coverage.torchvision_entries()
    by_name = {e.name: e for e in written}
    assert sorted(by_name) == sorted(torchvision.models.list_models(module=torchvision.models))
    families = {n: by_name[n].family for n in ("resnet18", "resnet50", "efficientnet_b7", "efficientnet_v2_s",
                                               "regnet_x_400mf", "regnet_y_128gf", "wide_resnet50_2", "vit_h_14",
                                               "swin_v2_t", "mobilenet_v3_small", "inception_v3", "vgg11_bn")}
    assert families == {"resnet18": "resnet", "resnet50": "resnet", "efficientnet_b7": "efficientnet",
                        "efficientnet_v2_s": "efficientnet", "regnet_x_400mf": "regnet", "regnet_y_128gf": "regnet",
                        "wide_resnet50_2": "wide_resnet", "vit_h_14": "vit", "swin_v2_t": "swin",
                        "mobilenet_v3_small": "mobilenet", "inception_v3": "inception", "vgg11_bn": "vgg"}
    sizes = {n: by_name[n].inputs[0] for n in ("inception_v3", "vit_h_14", "efficientnet_b7", "swin_v2_t",
                                               "resnet18")}
    assert sizes == {"inception_v3": "x:batch=2x3x299x299:float32", "vit_h_14": "x:batch=2x3x224x224:float32",
                     "efficientnet_b7": "x:batch=2x3x600x600:float32", "swin_v2_t": "x:batch=2x3x256x256:float32",
                     "resnet18": "x:batch=2x3x224x224:float32"}
    assert all(e.params_m for e in written)


# -- choosing entries -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_complete_deterministic_and_balanced(count: int) -> None:
    entries = coverage.load_zoo(coverage.TORCHVISION_ZOO)
    shards = [[e.name for e in coverage.shard(entries, i, count)] for i in range(1, count + 1)]
    names = [n for s in shards for n in s]
    assert sorted(names) == sorted(e.name for e in entries) and len(names) == len(set(names))
    assert shards == [[e.name for e in coverage.shard(list(entries), i, count)] for i in range(1, count + 1)]
    cost = {e.name: e.params_m or 0.0 for e in entries}
    totals = [sum(cost[n] for n in s) for s in shards]
    assert max(totals) - min(totals) <= max(cost.values())  # greedy largest-first: off by at most one model


def test_shard_and_selection_errors() -> None:
    for bad in ("0/4", "5/4", "2", "a/b"):
        with pytest.raises(InputError, match="expected I/N"):
            coverage.parse_shard(bad)
    assert coverage.parse_shard(" 2/4 ") == (2, 4)
    entries = coverage.load_zoo(coverage.TORCHVISION_ZOO)
    with pytest.raises(InputError, match="no entry named resnet9"):
        coverage.select(entries, "resnet18,resnet9", None)
    assert [e.name for e in coverage.select(entries, "resnet50,resnet18", "resnet")] == ["resnet18", "resnet50"]
    with pytest.raises(InputError, match="no entry named vgg11 .*with --family"):
        coverage.select(entries, "vgg11", "resnet")
    picked = {e.family: e.name for e in coverage.one_per_family(entries)}
    assert picked["resnet"] == "resnet18" and picked["vit"] == "vit_b_16" and picked["efficientnet"] == \
        "efficientnet_b0" and len(picked) == len({e.family for e in entries})


def test_format_options_reach_only_entries_with_that_format() -> None:
    entry = coverage.ZooEntry.model_validate({**TINY, "targets": "onnx,tflite@TfliteFromOnnxDirect:fp32"})
    options = ["tflite.timeout_s=300", "ncnn.timeout_s=9", "TfliteFromOnnx.keep_nchw=true", "onnx.opset=18"]
    assert coverage.options_for(entry, options) == ["tflite.timeout_s=300", "TfliteFromOnnx.keep_nchw=true",
                                                    "onnx.opset=18"]
    onnx_only = coverage.ZooEntry.model_validate(TINY)
    assert coverage.options_for(onnx_only, options) == ["TfliteFromOnnx.keep_nchw=true", "onnx.opset=18"]


# -- real runs ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One run of a two-model zoo: a tiny CNN to ONNX (passes) and a factory that raises (no report). Each
    convert gets its own empty cache from coverage.py (CONVCLI_CACHE_DIR set per subprocess)."""
    tmp = tmp_path_factory.mktemp("coverage")
    zoo = write_yaml(tmp / "zoo.yaml", [TINY, BROKEN])
    code, out = run("--zoo", zoo, "--results", tmp / "results", "--doc", tmp / "coverage.md")
    assert code == 0, out
    return zoo, tmp / "results", out


@pytest.mark.slow
def test_run_writes_one_result_per_model(first_run: tuple[Path, Path, str]) -> None:
    _, results, out = first_run
    ok = json.loads((results / "addcmul.json").read_text())
    cell = ok["targets"]["onnx-fp32"]
    assert ok["exit"] == 0 and cell["status"] == "passed" and cell["max_abs_err"] < 1e-4
    assert cell["chain"] == "pytorch -> OnnxFromPytorch -> SimplifyOnnx"
    assert [s["name"] for s in cell["steps"]] == ["OnnxFromPytorch", "SimplifyOnnx"] and cell["convert_s"] > 0
    assert (results / "reports" / "addcmul.json").exists() and (results / "logs" / "addcmul.log").exists()
    broken = json.loads((results / "raises.json").read_text())
    assert broken["exit"] == 2 and broken["targets"]["onnx-fp32"]["status"] == "error"
    assert "checkpoint server unreachable" in broken["targets"]["onnx-fp32"]["reason"]
    assert not list(results.glob(".*tmp*")), "a temporary file was left behind"
    assert "[1/2] shard 1/1 addcmul" in out and "onnx passed" in out and "onnx error" in out


@pytest.mark.slow
def test_resume_skips_done_entries_and_reruns_changed_ones(first_run: tuple[Path, Path, str],
                                                           tmp_path: Path) -> None:
    zoo, done_results, _ = first_run
    results = tmp_path / "results"
    results.mkdir()
    for path in done_results.glob("*.json"):
        (results / path.name).write_bytes(path.read_bytes())
    before = {p.name: p.read_text() for p in results.glob("*.json")}
    code, out = run("--zoo", zoo, "--results", results, "--doc", tmp_path / "c.md")
    assert code == 0 and "2 already done" in out and "0 to run" in out
    assert {p.name: p.read_text() for p in results.glob("*.json")} == before

    changed = write_yaml(tmp_path / "zoo.yaml", [{**TINY, "inputs": ["x:batch=2x3x20x20:float32"]}, BROKEN])
    code, out = run("--zoo", changed, "--results", results, "--doc", tmp_path / "c.md")
    assert code == 0 and "1 already done" in out and "[1/1] shard 1/1 addcmul" in out
    assert (results / "raises.json").read_text() == before["raises.json"]
    rerun = json.loads((results / "addcmul.json").read_text())
    assert rerun["entry"]["inputs"] == ["x:batch=2x3x20x20:float32"]
    assert rerun["entry_hash"] != json.loads(before["addcmul.json"])["entry_hash"]


@pytest.mark.slow
def test_timeout_stops_the_model_and_a_longer_timeout_reruns_it(tmp_path: Path) -> None:
    zoo = write_yaml(tmp_path / "zoo.yaml", [TINY])
    code, out = run("--zoo", zoo, "--results", tmp_path / "r", "--timeout-s", "1", "--no-render")
    assert code == 0, out
    result = json.loads((tmp_path / "r" / "addcmul.json").read_text())
    assert result["timed_out"] and result["targets"]["onnx-fp32"]["status"] == "error"
    assert "stopped after the coverage timeout of 1 s" in result["targets"]["onnx-fp32"]["reason"]
    entry = coverage.load_zoo(zoo)[0]
    assert coverage.done(entry, tmp_path / "r", 4, [], timeout_s=1)
    assert not coverage.done(entry, tmp_path / "r", 4, [], timeout_s=60)


@pytest.mark.slow
def test_table_groups_by_family_and_gives_every_reason(first_run: tuple[Path, Path, str], tmp_path: Path) -> None:
    zoo, results, _ = first_run
    doc = tmp_path / "coverage.md"
    doc.write_text("# My coverage\n\nHand-written text.\n")
    for _ in range(2):  # a re-render replaces the table and keeps the text around it
        code, out = run("--zoo", zoo, "--results", results, "--doc", doc, "--render")
        assert code == 0, out
    text = doc.read_text()
    assert text.startswith("# My coverage\n\nHand-written text.\n") and text.count(coverage.BEGIN) == 1
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert rows[0] == "| family | model | input | onnx | s |"
    assert rows[1].startswith("| **broken** | raises | 2x3x16x16 | error |")
    assert rows[2].startswith("| **tiny** | addcmul (conv + addcmul) | 2x3x16x16 | passed (")
    assert rows[3] == "| | **passed** | | 1/2 (50%) | |"
    reasons = text.split("### Reasons for every cell that did not pass")[1].split("###")[0]
    listed = [ln for ln in reasons.splitlines() if ln.startswith("- ")]
    assert len(listed) == 1 and listed[0].startswith("- raises / onnx: convcli exited 2 without a report")
    assert "checkpoint server unreachable" in listed[0]
    assert "convcli 0.1.0" in text and "onnxruntime " in text and "cores" in text


def test_table_merges_result_files_of_several_shards(tmp_path: Path) -> None:
    """Result files copied together from two machines render as one table: rows sorted by family, then by name
    in natural order (resnet18 before resnet101), TFLite cells with their conversion seconds."""
    def result(name: str, family: str, machine: str, tflite: str) -> dict:
        cell = {"format": "tflite", "precision": "fp32", "status": tflite, "max_abs_err": 2e-6 if
                tflite == "passed" else None, "reason": None if tflite == "passed" else "onnx2tf failed at node X",
                "chain": "", "steps": [], "convert_s": 40.0, "format_s": 31.0}
        return {"schema": coverage.RESULT_SCHEMA, "name": name, "family": family, "entry": {
            "inputs": ["x:batch=2x3x224x224:float32"]}, "seconds": 60, "samples": 4, "options": [],
            "finished": "2026-01-01T00:00:00", "machine": machine, "versions": {"convcli": "0.1.0"},
            "targets": {"tflite-fp32": cell}}

    for r in (result("resnet101", "resnet", "A", "error"), result("resnet18", "resnet", "B", "passed"),
              result("alexnet", "alexnet", "B", "passed")):
        coverage.atomic_write(tmp_path / f"{r['name']}.json", json.dumps(r))
    (tmp_path / "notes.json").write_text("{}")  # not a result file: ignored
    text = coverage.render(coverage.read_results(tmp_path), missing=["vgg11"])
    rows = [ln.split(" | ")[:4] for ln in text.splitlines() if ln.startswith("| ")][1:4]
    assert rows == [["| **alexnet**", "alexnet", "2x3x224x224", "passed (2e-06), 31 s"],
                    ["| **resnet**", "resnet18", "2x3x224x224", "passed (2e-06), 31 s"],
                    ["| ", "resnet101", "2x3x224x224", "error, 31 s"]]
    assert "2/3 (67%)" in text and "Not measured yet (1): vgg11." in text
    assert "- resnet101 / tflite: onnx2tf failed at node X" in text
    assert "- A (1 models)" in text and "- B (2 models)" in text


def test_input_column_drops_dimension_names_and_keeps_input_names_when_several() -> None:
    assert coverage.input_text("x:batch=2x3x224x224:float32", 1) == "2x3x224x224"
    assert coverage.input_text("input_ids:batch=2xseq=16:int64:0..30522", 2) == "input_ids 2x16"
    assert coverage.input_text("x:1x3x8x8", 1) == "1x3x8x8"


def test_a_cell_from_a_fallback_route_says_which() -> None:
    """A row's chain records a fallback ("[via ...]"); the cell says it, so a TFLite pass by onnx2tf 2.x after
    onnx2tf 1.x failed is not read as a pass of the TensorFlow path."""
    direct = {"status": "passed", "max_abs_err": 3e-6, "format": "tflite", "format_s": 30.0,
              "chain": "pytorch -> OnnxFromPytorch -> SimplifyOnnx -> TfliteFromOnnx [via TfliteFromOnnxDirect: "
                       "onnx2tf 1.x failed]"}
    assert coverage.cell_text(direct) == "passed (3e-06) via direct, 30 s"
    onnx_route = {"status": "passed", "max_abs_err": 1e-6, "format": "ncnn",
                  "chain": "pytorch -> NcnnFromPytorch [via ONNX: OnnxFromPytorch + pnnx]"}
    assert coverage.cell_text(onnx_route) == "passed (1e-06) via ONNX"
    plain = {**direct, "chain": "pytorch -> OnnxFromPytorch -> SimplifyOnnx -> TfliteFromOnnx"}
    assert coverage.cell_text(plain) == "passed (3e-06), 30 s"
