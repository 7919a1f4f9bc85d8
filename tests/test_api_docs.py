"""The examples in docs/python-api.md run: every ```python block, in order, in one namespace, in an empty folder
with the repository's recipes/ linked in (the examples name recipes/models/digits_cnn.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.models.catalogue import ROOT

DOC = ROOT / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_doc_has_the_examples_it_promises() -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 4
    joined = "\n".join(blocks)
    for needle in ("convcli.convert(model", "convcli.convert(\"recipes/", "convcli.check(", "except convcli.InputError",
                   "raise_on_failure=True"):
        assert needle in joined


def test_python_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "python_api_doc"}
    for i, block in enumerate(python_blocks(DOC.read_text())):
        exec(compile(block, f"{DOC.name}[block {i + 1}]", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "precision 'int4' is not one of fp32, fp16, bf16, int8, auto" in printed
    assert "max_size_mb" in printed or "size" in printed
    assert (tmp_path / "out" / "net" / "openvino-fp32").is_dir()
    assert (tmp_path / "out" / "digits" / "report.json").is_file()
