"""The Python API (convcli.convert / convcli.check): in-memory models, the same job and messages as the CLI,
cache keys of in-memory models, and raise_on_failure."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import convcli
from convcli.core.errors import ConversionFailed, GateFailed, InputError
from convcli.sources.objects import keras_digest, torch_digest
from tests.models.catalogue import BRANCHY, DIGITS, HERE, ROOT

FAST = {"latency": False, "samples": 4, "threads": 2}
X = "x:batch=2x8:float32"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.scale = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def test_in_memory_module_converts_and_checks(tmp_path: Path) -> None:
    model = tiny()
    model.train()
    report = convcli.convert(model, X, to="onnx", output=tmp_path / "out", options={"OnnxFromPytorch": {"opset": 18}},
                             outputs={"output": "embedding"}, reports=["md"], **FAST)
    assert isinstance(report, convcli.JobReport)
    assert report.steps[0].name == "OnnxFromPytorch" and report.steps[0].options["opset"] == 18
    assert report["onnx-fp32"].parity.outputs[0].kind == "embedding"  # type: ignore[union-attr]
    assert (tmp_path / "out" / "report.md").is_file()
    assert report.passed and report.exit_code == 0
    row = report["onnx-fp32"]
    assert row.status == "passed" and row.file is not None and row.file.is_absolute() and row.file.is_file()
    assert row.file == (tmp_path / "out" / "onnx-fp32" / "model.onnx").resolve()
    assert report.best is row and report.fastest is None  # no latency measured: best is the first passed row
    assert "onnx-fp32" in report and "tflite-fp32" not in report
    with pytest.raises(KeyError, match="its ids are onnx-fp32"):
        report["tflite-fp32"]
    assert model.training, "the module's training mode is restored after the job"
    # report.json on disk is the same report with paths relative to OUTDIR.
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk == json.loads(report.written.to_json())
    assert on_disk["artifacts"][0]["path"] == "onnx-fp32/model.onnx"
    assert on_disk["source"]["spec"].startswith("<in-memory pytorch Tiny ")

    checked = convcli.check(model, row.file, X, output=tmp_path / "check", **FAST)
    assert checked.passed and checked.artifacts[0].file == row.file
    assert (tmp_path / "check" / "report.json").is_file()


def test_changed_weights_change_the_cache_key(tmp_path: Path) -> None:
    model = tiny()
    first = convcli.convert(model, X, output=tmp_path / "a", **FAST)
    assert first.cache["steps_run"] > 0 and first.cache["steps_cached"] == 0
    again = convcli.convert(model, X, output=tmp_path / "b", **FAST)
    assert again.cache["steps_cached"] > 0 and again.cache["steps_run"] == 0, "unchanged module: cache reused"
    with torch.no_grad():
        model.fc.weight.add_(0.5)
    changed = convcli.convert(model, X, output=tmp_path / "c", **FAST)
    assert changed.cache["steps_cached"] == 0 and changed.cache["steps_run"] > 0
    assert changed.source.spec != first.source.spec
    # The new artifact is the new model: the ONNX files differ.
    assert first["onnx-fp32"].file.read_bytes() != changed["onnx-fp32"].file.read_bytes()  # type: ignore[union-attr]


def test_digest_follows_weights_attributes_and_code() -> None:
    base = torch_digest(tiny())
    assert base is not None and base == torch_digest(tiny())
    assert torch_digest(tiny(seed=1)) != base
    scaled = tiny()
    scaled.scale = 3.0
    assert torch_digest(scaled) != base
    with_buffer = tiny()
    with_buffer.register_buffer("offset", torch.zeros(4), persistent=False)
    assert torch_digest(with_buffer) != base


NOTEBOOK_CELL = """
import torch
from torch import nn

class CellNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x) * FACTOR
"""


def cell_model(factor: str) -> nn.Module:
    """A class defined the way a notebook cell defines it: inspect.getsource cannot read it."""
    namespace: dict[str, object] = {"__name__": "__cell__"}
    exec(compile(NOTEBOOK_CELL.replace("FACTOR", factor), "<cell>", "exec"), namespace)
    torch.manual_seed(0)
    return namespace["CellNet"]()  # type: ignore[operator]


def test_a_class_without_readable_source_is_keyed_by_its_code() -> None:
    assert torch_digest(cell_model("2.0")) == torch_digest(cell_model("2.0")) is not None
    assert torch_digest(cell_model("3.0")) != torch_digest(cell_model("2.0"))


def test_a_class_that_cannot_be_keyed_runs_without_the_cache(tmp_path: Path) -> None:
    made = type("MadeAtRunTime", (nn.Module,), {"forward": functools.partial(torch.relu)})
    model = made()
    assert torch_digest(model) is None
    with pytest.warns(UserWarning, match="ran without the cache"):
        report = convcli.convert(model, X, output=tmp_path / "out", **FAST)
    assert report.passed
    assert report.cache["enabled"] is False and "functools.partial" in report.cache["note"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["cache"]["note"] == report.cache["note"]


def test_spec_string_is_the_same_job_as_the_cli(cli, tmp_path: Path) -> None:
    args = ["convert", BRANCHY.spec, "-i", BRANCHY.inputs[0], "--to", "onnx", "--no-latency", "--samples", "4",
            "--threads", "2"]
    res = cli(*args, "-o", tmp_path / "cli")
    assert res.exit_code == 0, res.output
    report = convcli.convert(BRANCHY.spec, list(BRANCHY.inputs), to=["onnx"], output=tmp_path / "api", **FAST)
    from_cli = res.report(tmp_path / "cli")
    from_api = json.loads((tmp_path / "api" / "report.json").read_text())
    for key in ("exit_code", "summary"):
        assert from_api[key] == from_cli[key]
    assert from_api["source"]["spec"] == from_cli["source"]["spec"] == BRANCHY.spec
    assert [(r["id"], r["status"], r["parity"]) for r in from_api["artifacts"]] == \
           [(r["id"], r["status"], r["parity"]) for r in from_cli["artifacts"]]
    assert report.exit_code == res.exit_code


@pytest.mark.parametrize(
    ("cli_args", "api_kwargs"),
    [
        ([DIGITS.spec, "--to", "onnx:int4"], {"model": DIGITS.spec, "to": "onnx:int4"}),
        ([DIGITS.spec, "--to", "onnx,coreml"], {"model": DIGITS.spec, "to": ["onnx", "coreml"]}),
        ([DIGITS.spec, "--input", "x"], {"model": DIGITS.spec, "inputs": "x"}),
        ([f"{HERE}/small.py:nope"], {"model": f"{HERE}/small.py:nope"}),
        ([DIGITS.spec, "--output-kind", "output:bananas"], {"model": DIGITS.spec, "outputs": {"output": "bananas"}}),
        ([DIGITS.spec, "--weights", "nope.pt"], {"model": DIGITS.spec, "weights": "nope.pt"}),
    ],
)
def test_bad_input_raises_the_message_the_cli_prints(cli, tmp_path: Path, cli_args: list[str],
                                                     api_kwargs: dict[str, object]) -> None:
    res = cli("convert", *cli_args, "-o", tmp_path / "cli")
    assert res.exit_code == 2
    with pytest.raises(InputError) as caught:
        convcli.convert(output=tmp_path / "api", **api_kwargs)  # type: ignore[arg-type]
    assert f"error: {caught.value.one_line()}" == " ".join(res.output.split())
    assert list(tmp_path.iterdir()) == []


def test_in_memory_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input shapes are unknown"):
        convcli.convert(tiny(), output=tmp_path / "o", **FAST)
    with pytest.raises(InputError, match="does not run on inputs x:batch=2x5:float32"):
        convcli.convert(tiny(), "x:batch=2x5:float32", output=tmp_path / "o", **FAST)
    with pytest.raises(InputError, match="is not a model convcli can take"):
        convcli.convert(object(), X, output=tmp_path / "o")
    with pytest.raises(InputError, match="weights: go with a file.py:factory source, not an in-memory model"):
        convcli.convert(tiny(), X, weights=ROOT / "recipes/models/digits_cnn.pt", output=tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def test_failed_gate_returns_a_report_or_raises_with_it(tmp_path: Path) -> None:
    gates = {"max_size_mb": 1e-6}
    report = convcli.convert(tiny(), X, output=tmp_path / "a", gates=gates, **FAST)
    assert not report.passed and report.exit_code == 1 and report["onnx-fp32"].status == "failed"
    with pytest.raises(GateFailed) as caught:
        convcli.convert(tiny(), X, output=tmp_path / "b", gates=gates, raise_on_failure=True, **FAST)
    assert caught.value.exit_code == 1 and caught.value.report.exit_code == 1
    assert "onnx-fp32: failed" in caught.value.one_line()
    assert (tmp_path / "b" / "report.json").is_file()


def test_failed_conversion_is_an_error_row_or_raises(tmp_path: Path) -> None:
    # The dynamo exporter cannot capture the branchy model (tests/test_errors.py): the ONNX step fails.
    kwargs = {"inputs": BRANCHY.inputs[0], "exporter": "dynamo", **FAST}
    report = convcli.convert(BRANCHY.spec, output=tmp_path / "a", **kwargs)  # type: ignore[arg-type]
    assert report.exit_code == 3 and report["onnx-fp32"].status == "error" and report.best is None
    assert report["onnx-fp32"].file is None
    with pytest.raises(ConversionFailed) as caught:
        convcli.convert(BRANCHY.spec, output=tmp_path / "b", raise_on_failure=True, **kwargs)  # type: ignore[arg-type]
    assert caught.value.exit_code == 3 and caught.value.report["onnx-fp32"].status == "error"


def test_import_convcli_stays_light() -> None:
    code = ("import sys, convcli; convcli.JobReport; convcli.InputError; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorflow', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_in_memory_keras_model_converts_and_its_weights_key_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorflow")
    import numpy as np

    from convcli.sources.tf_sources import import_tensorflow

    import_tensorflow(threads=2)  # triton first (later torch exports must not crash); the threads every test pins
    import keras

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the model's .keras file is saved for the call

    inp = keras.Input((8,), name="x")
    model = keras.Model(inp, keras.layers.Dense(4)(inp))
    report = convcli.convert(model, to="onnx", output=tmp_path / "a", **FAST)
    assert report.passed, report.problems()
    assert report.source.spec.startswith("<in-memory keras Functional ") and report["onnx-fp32"].file.is_file()  # type: ignore[union-attr]
    assert list(scratch.iterdir()) == [], "the temporary .keras file is removed after the call"
    before = keras_digest(model)
    assert before is not None and report.source.spec.endswith(f" {before[:16]}>")
    model.layers[-1].kernel.assign(np.full((8, 4), 0.5, "float32"))
    assert keras_digest(model) != before
