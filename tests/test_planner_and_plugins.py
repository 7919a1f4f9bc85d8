"""The registry, the planner and third-party plugins through the entry-point group."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from convcli.core.errors import InputError
from convcli.core.planner import TargetRequest, plan
from convcli.core.registry import Registry, default_registry, load_plugins

PLUGIN = '''
from pathlib import Path
from convcli.core.formats import FormatSpec
from convcli.core.step import Converter
from convcli.core.artifact import Artifact


class OnnxTextFromOnnx(Converter):
    """A third-party edge: ONNX -> its human-readable text form."""
    name = "OnnxTextFromOnnx"
    source = "onnx"
    target = "onnx-text"
    requires = ("onnx",)

    def run(self, artifact, ctx):
        import onnx
        path = ctx.workdir / "model.txt"
        path.write_text(onnx.printer.to_text(onnx.load(str(artifact.path))))
        return Artifact(format="onnx-text", path=path, inputs=artifact.inputs, output_names=artifact.output_names)


def register(registry):
    registry.add_format(FormatSpec("onnx-text", "ONNX as text", (".txt",)))
    registry.add_step(OnnxTextFromOnnx)
'''


@pytest.fixture
def plugin_on_path(tmp_path: Path):
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "convcli_textplugin.py").write_text(PLUGIN)
    dist = pkg / "convcli_textplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: convcli-textplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[convcli.plugins]\ntext = convcli_textplugin\n")
    sys.path.insert(0, str(pkg))
    yield
    sys.path.remove(str(pkg))
    sys.modules.pop("convcli_textplugin", None)


def test_builtins_come_through_the_entry_point_group() -> None:
    registry = default_registry()
    assert registry.plugins["builtin"] == "ok"
    assert {"pytorch", "torchscript", "exported-program", "onnx"} <= set(registry.formats)
    assert "OnnxFromPytorch" in registry.converters and "SimplifyOnnx" in registry.passes


def test_third_party_plugin_adds_a_format_and_converter(plugin_on_path, cli, catalogue, tmp_path: Path) -> None:
    registry = load_plugins(Registry())
    assert registry.plugins["text"] == "ok"
    assert "OnnxTextFromOnnx" in registry.converters
    the_plan = plan(registry, "pytorch", [TargetRequest("onnx-text")])
    names = [s.step.name for s in the_plan.steps.values()]
    assert names == ["OnnxFromPytorch", "SimplifyOnnx", "OnnxTextFromOnnx"]


def test_plan_shares_prefixes_and_names_unreachable_targets() -> None:
    registry = default_registry()
    the_plan = plan(registry, "pytorch", [TargetRequest("onnx"), TargetRequest("onnx", "fp32")])
    assert len(the_plan.steps) == 2
    with pytest.raises(InputError, match="no conversion path from onnx to pytorch"):
        plan(registry, "onnx", [TargetRequest("pytorch")])
    with pytest.raises(InputError, match="unknown format"):
        plan(registry, "pytorch", [TargetRequest("caffe")])


def test_plan_and_doctor_commands(cli, catalogue) -> None:
    res = cli("plan", catalogue["digits_cnn"].spec, "--to", "onnx")
    assert res.exit_code == 0, res.output
    assert "OnnxFromPytorch" in res.output and "SimplifyOnnx" in res.output
    doc = cli("doctor", "--json")
    assert doc.exit_code == 0
    import json

    data = json.loads(doc.output)
    assert data["schema"] == "convcli.doctor/v1"
    by_name = {s["name"]: s for s in data["steps"]}
    assert by_name["OnnxFromPytorch"]["available"] is True
    assert by_name["onnxruntime"]["packages"]["onnxruntime"]
    human = cli("doctor")
    assert human.exit_code == 0 and "available" in human.output


def test_every_command_help_has_an_example(cli) -> None:
    from convcli.cli.app import app

    commands = [[c.name] for c in app.registered_commands]
    commands += [[g.name, c.name] for g in app.registered_groups for c in g.typer_instance.registered_commands]
    assert ["debug"] in commands and ["package"] in commands and ["recipe", "validate"] in commands
    for command in commands:
        res = cli(*command, "--help")
        assert res.exit_code == 0
        assert "Example" in res.output, command
