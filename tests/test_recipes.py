"""Recipes: schema errors with YAML path and line, gates and exit codes, the cache, shards, schema file."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from convcli.recipes.batch import combined_exit_code, select_shard
from tests.models.catalogue import ROOT

FAST_RECIPE = {
    "version": 1,
    "source": {"model": f"{ROOT}/recipes/models/digits_cnn.py:build",
               "weights": f"{ROOT}/recipes/models/digits_cnn.pt"},
    "data": {"validation": f"{ROOT}/calibration_data/digits/val", "samples": 8},
    "targets": [{"format": "onnx", "precisions": ["fp32"]}],
    "latency": {"runs": 3, "warmup": 1},
}


def write(tmp_path: Path, name: str, data: dict | str) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(cli, path: Path) -> None:
    res = cli("recipe", "validate", path)
    assert res.exit_code == 0, res.output


BAD = """version: 1
source:
  model: {model}
targets:
  - format: onnx
    precisions: [fp32]
  - format: openvino
    precisions: [fp32, int4]
"""


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (BAD, "bad.yaml:8: targets[1].precisions[1]: 'int4' is not one of 'fp32', 'fp16', 'bf16', 'int8', 'auto'"),
        (BAD.replace("precisions: [fp32]\n", "precisions: [fp32]\n    colour: red\n"),
         "bad.yaml:7: targets[0].colour: unknown key"),
        (BAD.replace("int4", "fp16").replace("version: 1", "version: 1\nlatency:\n  runs: many"),
         "bad.yaml:3: latency.runs: Input should be a valid integer"),
        (BAD.replace("int4", "fp16").replace("format: onnx", "format: coreml"), "'coreml' is not one of"),
        (BAD.replace("int4", "fp16").replace("precisions: [fp32]", "options: {colour: 12}"),
         "targets[0].options.colour: unknown key"),
        (BAD.replace("int4", "fp16").replace("{model}", "missing/model.py:build"),
         "bad.yaml:3: source.model: file"),
    ],
)
def test_schema_errors_name_the_yaml_path_and_line(cli, tmp_path: Path, text: str, fragment: str) -> None:
    recipe = write(tmp_path, "bad.yaml", text.replace("{model}", f"{ROOT}/recipes/models/digits_cnn.py:build"))
    for cmd in (("recipe", "validate", recipe), ("run", recipe)):
        res = cli(*cmd)
        assert res.exit_code == 2, res.output
        assert fragment in " ".join(res.output.split()), res.output
        assert "Traceback" not in res.output


def test_failing_gate_exits_1_with_a_failed_junit_case(cli, tmp_path: Path) -> None:
    recipe = write(tmp_path, "gate.yaml", {**FAST_RECIPE, "gates": {"max_p50_ms": 1e-6}, "reports": ["junit", "md"],
                                          "output": "out"})
    res = cli("run", recipe)
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["artifacts"][0]["status"] == "failed"
    assert report["artifacts"][0]["failures"][0].startswith("p50")
    root = ET.parse(tmp_path / "out/report.junit.xml").getroot()
    assert root.iter("failure").__next__() is not None
    # per-target gates override the job's: this one passes
    ok = {**FAST_RECIPE, "gates": {"max_p50_ms": 1e-6}, "output": "out2",
          "targets": [{"format": "onnx", "gates": {"max_p50_ms": 1e6}}]}
    assert cli("run", write(tmp_path, "ok.yaml", ok)).exit_code == 0


def test_second_run_hits_the_cache_and_option_change_rebuilds_only_dependents(cli, tmp_path: Path) -> None:
    recipe = write(tmp_path, "r.yaml", {**FAST_RECIPE, "output": "out"})
    first = cli("run", recipe)
    assert first.exit_code == 0, first.output
    second = cli("run", recipe)
    assert second.exit_code == 0, second.output
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["cache"]["steps_run"] == 0 and report["cache"]["steps_cached"] == 2
    assert all(s["cached"] for s in report["steps"]) and report["artifacts"][0]["cached"]
    assert "cached" in second.output
    changed = write(tmp_path, "r.yaml", {**FAST_RECIPE, "output": "out",
                                         "step_options": {"SimplifyOnnx": {"samples": 2}}})
    assert cli("run", changed).exit_code == 0
    steps = {s["name"]: s for s in json.loads((tmp_path / "out/report.json").read_text())["steps"]}
    assert steps["OnnxFromPytorch"]["cached"] and not steps["SimplifyOnnx"]["cached"]
    assert cli("run", changed, "--no-cache").exit_code == 0
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["cache"]["steps_run"] == 2


def test_corrupt_cache_entry_is_rebuilt(cli, tmp_path: Path, private_cache: Path) -> None:
    recipe = write(tmp_path, "r.yaml", {**FAST_RECIPE, "output": "out"})
    assert cli("run", recipe).exit_code == 0
    onnx_files = sorted((private_cache / "steps").rglob("model.onnx"))
    assert onnx_files
    for f in onnx_files:
        f.write_bytes(f.read_bytes()[:-10] + b"corrupted!")
    res = cli("run", recipe)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["cache"]["corrupt_entries_rebuilt"] >= 1
    assert report["cache"]["steps_run"] >= 1
    assert report["artifacts"][0]["status"] == "passed"


def test_shards_split_without_overlap_or_loss(cli, tmp_path: Path) -> None:
    paths = [tmp_path / f"m{i:02d}.yaml" for i in range(11)]
    for count in (1, 2, 3, 4):
        parts = [select_shard(list(reversed(paths)), i, count) for i in range(1, count + 1)]
        flat = [p for part in parts for p in part]
        assert sorted(flat) == sorted(paths) and len(flat) == len(set(flat))
    assert combined_exit_code([0, 1, 0]) == 1 and combined_exit_code([1, 3]) == 3 and combined_exit_code([]) == 0
    bad = cli("run", paths[0], "--shard", "5/4")
    assert bad.exit_code == 2 and "--shard" in bad.output


def test_dry_run_and_only(cli, tmp_path: Path) -> None:
    recipe = write(tmp_path, "r.yaml", {**FAST_RECIPE, "targets": [{"format": "onnx"}, {"format": "tensorrt"}]})
    res = cli("run", recipe, "--dry-run")
    assert res.exit_code == 0 and "OnnxFromPytorch" in res.output and "tensorrt-fp32: unavailable" in res.output
    assert not (tmp_path / "out").exists()
    res = cli("run", recipe, "--only", "coreml")
    assert res.exit_code == 2 and "no target" in res.output


def test_several_recipes_in_parallel_children(cli, tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", {**FAST_RECIPE, "output": "out-a"})
    b = write(tmp_path, "b.yaml", {**FAST_RECIPE, "output": "out-b", "gates": {"max_size_mb": 1e-6}})
    res = cli("run", a, b, "--jobs", "2")
    assert res.exit_code == 1, res.output
    assert (tmp_path / "out-a/report.json").exists() and (tmp_path / "out-b/report.json").exists()
    assert "FAILED (1)" in res.output


def test_committed_json_schema_matches_the_command(cli) -> None:
    res = cli("recipe", "schema")
    assert res.exit_code == 0
    committed = (ROOT / "docs/recipe-schema.json").read_text()
    assert json.loads(res.output) == json.loads(committed), "run: convcli recipe schema -o docs/recipe-schema.json"


def test_recipe_init_writes_a_valid_recipe(cli, tmp_path: Path) -> None:
    out = tmp_path / "mine.yaml"
    res = cli("recipe", "init", f"{ROOT}/recipes/models/digits_cnn.py:build", "--weights",
              ROOT / "recipes/models/digits_cnn.pt", "--to", "onnx", "-o", out)
    assert res.exit_code == 0, res.output
    assert cli("recipe", "validate", out).exit_code == 0
    assert cli("recipe", "init", f"{ROOT}/recipes/models/digits_cnn.py:build", "-o", out).exit_code == 2
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_a_recipe_with_int8_and_no_calibration_stops_the_batch_before_anything_runs(cli, tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", {**FAST_RECIPE, "output": "out-a"})
    b = write(tmp_path, "b.yaml", {**FAST_RECIPE, "output": "out-b",
                                   "targets": [{"format": "openvino", "precisions": ["fp32", "int8"]}]})
    res = cli("run", a, b)
    assert res.exit_code == 2, res.output
    assert "openvino-int8 (QuantizeOpenvinoInt8) needs calibration data" in res.output
    assert "data.calibration" in res.output
    assert not (tmp_path / "out-a").exists() and not (tmp_path / "out-b").exists()


def test_a_format_option_reaches_every_target_of_that_format() -> None:
    """`--to openvino,openvino@OpenvinoFromPytorch -O openvino.KEY=V`: both rows are openvino targets (two paths
    compared side by side); the option used to reach only the last one. (Whether each converter accepts it is
    checked when planning, as for any -O option.)"""
    from convcli.recipes.flags import build_job

    spec = build_job("m.py:build", "openvino,openvino@OpenvinoFromPytorch", ["x:1x3x8x8:float32"], None, "fp32",
                     ["openvino.timeout_s=120"], Path("out"))
    assert [t.options for t in spec.targets] == [{"timeout_s": 120}, {"timeout_s": 120}]
