"""convcli package: Triton model repositories from a run's passed artifacts.

Each config.pbtxt is parsed against Triton's schema here and compared with the model file as its own runtime loads
it (onnxruntime, OpenVINO), independently of the checker inside convcli.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from convcli.deploy.triton import base_name, check_model, model_name
from convcli.deploy.triton_schema import enum_name, model_config_class
from tests.conftest import FAST, Cli
from tests.models.catalogue import DIGITS

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}


def parse(model_dir: Path) -> Any:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_class()())


def runtime_io(model_dir: Path, version: int) -> list[tuple[str, str, str, list[int]]]:
    """(kind, name, Triton type, dims with -1 for dynamic) as onnxruntime or OpenVINO declare them."""
    folder = model_dir / str(version)
    if (folder / "model.onnx").exists():
        import onnxruntime as ort

        s = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        return [(kind, a.name, ORT_TYPES[a.type], [d if isinstance(d, int) else -1 for d in a.shape])
                for kind, args in (("input", s.get_inputs()), ("output", s.get_outputs())) for a in args]
    import openvino as ov

    c = ov.Core().compile_model(str(folder / "model.xml"), "CPU")
    types = {"f32": "TYPE_FP32"}
    return [(kind, p.get_any_name(), types[p.get_element_type().get_type_name()],
             [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()])
            for kind, ports in (("input", c.inputs), ("output", c.outputs)) for p in ports]


def config_io(model_dir: Path) -> list[tuple[str, str, str, list[int]]]:
    cfg = parse(model_dir)
    batch = [-1] if cfg.max_batch_size > 0 else []
    return [(kind, t.name, enum_name("DataType", t.data_type), batch + list(t.dims))
            for kind, tensors in (("input", cfg.input), ("output", cfg.output)) for t in tensors]


def digits(cli: Cli, out: Path, to: str, *extra: str) -> None:
    r = cli("convert", DIGITS.spec, "--weights", DIGITS.weights, "--to", to, "-o", out, "--samples", "4", *FAST,
            *extra)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One digits run to onnx + openvino (dynamic batch), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("run") / "digits"
    cache = tmp_path_factory.mktemp("cache")
    digits(Cli(), out, "onnx,openvino", "--cache-dir", cache)
    return out


def test_package_writes_configs_that_match_the_model_files(cli: Cli, run_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    r = cli("package", run_dir, "--triton", repo, "--dynamic-batching", "--version-policy", "latest:2",
            "--instance-count", "2")
    assert r.exit_code == 0, r.output
    models = sorted(p.name for p in repo.iterdir())
    assert models == ["digits_cnn_onnx_fp32", "digits_cnn_openvino_fp32"]
    for name in models:
        model_dir = repo / name
        cfg = parse(model_dir)
        assert cfg.name == name
        assert (cfg.platform, cfg.backend) == (("onnxruntime_onnx", "onnxruntime") if "onnx_" in name
                                               else ("", "openvino"))
        # digits' first dim is a dynamic batch: max_batch_size set, dims without the batch
        assert cfg.max_batch_size == 8
        assert list(cfg.input[0].dims) == [1, 8, 8] and list(cfg.output[0].dims) == [10]
        assert config_io(model_dir) == runtime_io(model_dir, 1)
        assert cfg.version_policy.latest.num_versions == 2
        assert cfg.instance_group[0].count == 2
        assert enum_name("ModelInstanceGroup.Kind", cfg.instance_group[0].kind) == "KIND_CPU"
        assert cfg.HasField("dynamic_batching")
        # warm-up: one raw float32 sample per input, from the run's parity data (random, seed 0)
        (warm,) = cfg.model_warmup
        entry = warm.inputs["x"]
        data = np.fromfile(model_dir / "warmup" / entry.input_data_file, dtype=np.float32)
        assert data.size == 1 * 8 * 8 and list(entry.dims) == [1, 8, 8]
        from convcli.core.tensors import parse_input_spec
        from convcli.parity.data import random_data

        report = json.loads((run_dir / "report.json").read_text())
        specs = [parse_input_spec(t) for t in report["source"]["inputs"]]
        np.testing.assert_array_equal(data, random_data(specs, 4, 0).inputs["x"][0].ravel())
        # model card: the report's lines and the manifest's provenance for this artifact
        card = (model_dir / "README.md").read_text()
        manifest = json.loads((run_dir / "manifest.json").read_text())
        artifact = "onnx-fp32" if "onnx_" in name else "openvino-fp32"
        row = next(a for a in report["artifacts"] if a["id"] == artifact)
        assert f"max abs err {row['parity']['max_abs_err']:.3g}" in card
        assert manifest["inputs_sha256"]["weights"] in card
        assert all(manifest["outputs_sha256"][f] in card for f in row["files"])
        assert "latency: p50" in card
    assert "tritonserver --model-repository" in r.output


def test_second_package_adds_a_version_and_leaves_the_first(cli: Cli, run_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert cli("package", run_dir, "--triton", repo).exit_code == 0
    model_dir = repo / "digits_cnn_openvino_fp32"
    first = {p.name: p.read_bytes() for p in (model_dir / "1").iterdir()}
    r = cli("package", run_dir, "--triton", repo, "--version-policy", "all")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "2", "warmup"]
    assert {p.name: p.read_bytes() for p in (model_dir / "1").iterdir()} == first
    assert sorted(p.name for p in (model_dir / "2").iterdir()) == ["model.bin", "model.xml"]
    assert parse(model_dir).version_policy.HasField("all")
    assert config_io(model_dir) == runtime_io(model_dir, 2)
    history = json.loads((model_dir / "convcli-versions.json").read_text())
    assert [e["version"] for e in history] == [1, 2]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]


def test_static_batch_model_gets_no_max_batch_size(cli: Cli, tmp_path: Path) -> None:
    out, repo = tmp_path / "static", tmp_path / "repo"
    digits(cli, out, "onnx", "--input", "x:2x1x8x8:float32")
    r = cli("package", out, "--triton", repo, "--name", "fixed", "--dynamic-batching")
    assert r.exit_code == 0, r.output
    model_dir = repo / "fixed_onnx_fp32"
    cfg = parse(model_dir)
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [2, 1, 8, 8]
    assert config_io(model_dir) == runtime_io(model_dir, 1)
    assert (model_dir / "warmup" / "x").stat().st_size == 2 * 64 * 4

    # the same model name over a dynamic-batch version 1: one config serves every loaded version, so serving both
    # is refused (exit 3, nothing moved in); serving only the newest is fine
    dynamic = tmp_path / "dynamic"
    digits(cli, dynamic, "onnx")
    repo2 = tmp_path / "repo2"
    assert cli("package", dynamic, "--triton", repo2, "--name", "fixed").exit_code == 0
    before = sorted(p.name for p in (repo2 / "fixed_onnx_fp32").iterdir())
    config_before = (repo2 / "fixed_onnx_fp32" / "config.pbtxt").read_text()
    r = cli("package", out, "--triton", tmp_path / "new" / "repo3", "--name", "fixed", "--version-policy",
            "specific:5")
    assert r.exit_code == 3 and "version_policy serves none" in r.output, r.output
    assert not (tmp_path / "new").exists()
    r = cli("package", out, "--triton", repo2, "--name", "fixed", "--version-policy", "all")
    assert r.exit_code == 3, r.output
    assert "fixed_onnx_fp32: input[0] 'x' dims are [2, 1, 8, 8] but version 1 model.onnx declares [-1, 1, 8, 8]" \
        in r.output
    assert sorted(p.name for p in (repo2 / "fixed_onnx_fp32").iterdir()) == before
    assert (repo2 / "fixed_onnx_fp32" / "config.pbtxt").read_text() == config_before
    r = cli("package", out, "--triton", repo2, "--name", "fixed")
    assert r.exit_code == 0, r.output
    assert parse(repo2 / "fixed_onnx_fp32").max_batch_size == 0 and (repo2 / "fixed_onnx_fp32" / "2").is_dir()


def test_checker_names_the_model_and_field_of_a_mismatch(cli: Cli, run_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert cli("package", run_dir, "--triton", repo).exit_code == 0
    model_dir = repo / "digits_cnn_onnx_fp32"
    assert check_model(model_dir) == []
    text = (model_dir / "config.pbtxt").read_text()
    (model_dir / "config.pbtxt").write_text(text.replace("dims: 10", "dims: 12").replace("TYPE_FP32", "TYPE_FP16", 1))
    problems = check_model(model_dir)
    assert any("digits_cnn_onnx_fp32: output[0] 'output' dims are [12]" in p for p in problems), problems
    assert any("input[0] 'x' data_type is TYPE_FP16" in p for p in problems), problems
    (model_dir / "config.pbtxt").write_text(text + "\nnot_a_field: 1\n")
    with pytest.raises(Exception, match="not a valid Triton model config"):
        check_model(model_dir)


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(cli: Cli, run_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    r = cli("package", tmp_path / "empty", "--triton", repo)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    (tmp_path / "noreport").mkdir()
    r = cli("package", tmp_path / "noreport", "--triton", repo)
    assert r.exit_code == 2 and "no report at" in r.output and len(r.output.strip().splitlines()) == 1, r.output

    failed = tmp_path / "failed"
    shutil.copytree(run_dir, failed)
    report = json.loads((failed / "report.json").read_text())
    for row in report["artifacts"]:
        row["status"] = "failed"
    report["artifacts"].append({**report["artifacts"][0], "id": "tflite-fp32", "format": "tflite",
                                "status": "passed"})
    (failed / "report.json").write_text(json.dumps(report))
    r = cli("package", failed, "--triton", repo)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "no passed artifact" in r.output and "tflite-fp32: NVIDIA's Triton containers have no" in r.output
    assert not repo.exists()

    file_repo = tmp_path / "repo.txt"
    file_repo.write_text("x")
    r = cli("package", run_dir, "--triton", file_repo)
    assert r.exit_code == 2 and "is a file" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = cli("package", run_dir, "--triton", repo, "--version-policy", "newest")
    assert r.exit_code == 2 and "version_policy" in r.output, r.output
    assert not repo.exists()


def test_recipe_package_section_after_a_passed_run(cli: Cli, tmp_path: Path) -> None:
    """The quickstart's shape, smaller: a recipe with a labelled set, onnx + openvino + ncnn, then package:."""
    assert DIGITS.validation is not None
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(f"""
version: 1
name: mini
source: {{model: "{DIGITS.spec}", weights: "{DIGITS.weights}"}}
data: {{validation: "{DIGITS.validation}", validation_samples: 20, samples: 4}}
targets:
  - {{format: onnx, precisions: [fp32]}}
  - {{format: openvino, precisions: [fp32]}}
  - {{format: ncnn, precisions: [fp32]}}
latency: {{batches: [1], runs: 3, threads: 2}}
output: out
package: {{triton: repo, version_policy: "specific:1", dynamic_batching: true}}
""")
    r = cli("run", recipe)
    assert r.exit_code == 0, r.output
    repo = tmp_path / "repo"
    assert sorted(p.name for p in repo.iterdir()) == ["mini_onnx_fp32", "mini_openvino_fp32"]
    assert "skipped ncnn-fp32: Triton has no NCNN backend" in r.output
    for model_dir in repo.iterdir():
        assert list(parse(model_dir).version_policy.specific.versions) == [1]
        assert config_io(model_dir) == runtime_io(model_dir, 1)
        assert "accuracy: " in (model_dir / "README.md").read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["exit_code"] == 0


@pytest.mark.parametrize(("name", "model", "expected"), [
    (None, "/x/recipes/models/digits_cnn.py:build", "digits_cnn_onnx_fp32"),
    (None, "torchvision.models:resnet18", "models_onnx_fp32"),
    (None, "exports/model.v2.onnx", "model_v2_onnx_fp32"),
    ("my net", "whatever.onnx", "my_net_onnx_fp32"),
])
def test_model_names(name: str | None, model: str, expected: str) -> None:
    assert model_name(base_name(name, model), "onnx-fp32") == expected
    assert model_name("m", "onnx-fp32@OnnxFromPytorch") == "m_onnx_fp32_OnnxFromPytorch"


def test_help_has_an_example(cli: Cli) -> None:
    res = cli("package", "--help")
    assert res.exit_code == 0 and "Example" in res.output and "--triton" in res.output


def test_an_intermediate_file_for_tensorrt_is_not_packaged(cli: Cli, tmp_path: Path) -> None:
    """`--to tensorrt:fp16` also builds (and judges) the mixed-precision ONNX the engine is built from; that file
    is the engine's input, not a model to serve, so only the real onnx target is packaged."""
    out, repo = tmp_path / "run", tmp_path / "repo"
    digits(cli, out, "onnx,tensorrt:fp16")
    ids = {a["id"]: a["status"] for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert ids.get("onnx-fp16-for-tensorrt") == "passed" and ids.get("tensorrt-fp16") == "unavailable"
    r = cli("package", out, "--triton", repo)
    assert r.exit_code == 0, r.output
    assert "onnx-fp16-for-tensorrt" in r.output and "not a deployable of its own" in r.output
    assert [p.name for p in repo.iterdir() if p.is_dir()] == [model_name("digits_cnn", "onnx-fp32")]


def test_max_batch_size_above_a_tensorrt_profile_is_refused_with_what_to_do() -> None:
    """A TensorRT engine accepts batches only up to its optimization profile's max (fixed at build time); a
    Triton max_batch_size above it would batch requests the engine rejects. The limit comes from the engine
    (``_read_tensorrt``, on a machine with TensorRT); the rule itself is plain Python, checked here on the I/O
    such an engine declares. Writing refuses it, and checking an existing repository reports it."""
    from convcli.core.errors import InputError
    from convcli.deploy.triton import ModelIO, Tensor, _compare_io, build_config
    from convcli.recipes.schema import PackageSpec

    io = ModelIO([Tensor("x", "TYPE_FP32", (-1, 3, 8, 8))], [Tensor("y", "TYPE_FP32", (-1, 10))], batch_max=16)
    ok = build_config("m_tensorrt_fp16", "tensorrt", io, PackageSpec(triton=Path("repo"), max_batch_size=16), None)
    assert ok.max_batch_size == 16 and _compare_io("m", ok, io, "model.plan") == []
    with pytest.raises(InputError, match="max_batch_size is 32 but model.plan accepts batches up to 16") as err:
        build_config("m_tensorrt_fp16", "tensorrt", io, PackageSpec(triton=Path("repo"), max_batch_size=32), None)
    assert "--max-batch-size 16" in err.value.message and "profile_max" in err.value.message
    ok.max_batch_size = 32  # a hand-edited config.pbtxt
    assert ["accepts batches up to 16" in p for p in _compare_io("m", ok, io, "model.plan")] == [True]
