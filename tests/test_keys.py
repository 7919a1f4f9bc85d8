"""Cache keys change whenever something that changes results changes: the factory package's code, the
framework versions of the source loader, convcli's own code."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from convcli.core import cache
from convcli.core.fsutil import sha256_py_tree
from convcli.job import keys
from convcli.job.keys import source_key, source_versions
from convcli.recipes.schema import JobSpec
from convcli.sources.onnx_source import OnnxLoader
from convcli.sources.tf_sources import KerasLoader, SavedModelLoader
from convcli.sources.torch_sources import PytorchFactoryLoader


def job(model: str) -> JobSpec:
    return JobSpec.model_validate({"source": {"model": model}, "targets": [{"format": "onnx"}]})


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def factory_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``zoo_pkg.models:build`` whose model code lives two folders down, in ``zoo_pkg/layers/deep/blocks.py``."""
    root = tmp_path / "zoo_pkg"
    write(root / "__init__.py", "")
    write(root / "models.py", "from zoo_pkg.layers.deep.blocks import Block\n\ndef build():\n    return Block()\n")
    write(root / "layers" / "__init__.py", "")
    write(root / "layers" / "deep" / "__init__.py", "")
    write(root / "layers" / "deep" / "blocks.py", "import torch\n\nclass Block(torch.nn.Linear):\n"
                                                   "    def __init__(self):\n        super().__init__(4, 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return root


def test_editing_a_file_deep_in_the_factory_package_changes_the_source_key(factory_package: Path) -> None:
    spec = job("zoo_pkg.models:build")
    before = source_key(spec, PytorchFactoryLoader)
    assert source_key(spec, PytorchFactoryLoader) == before  # stable while nothing changes
    blocks = factory_package / "layers" / "deep" / "blocks.py"
    blocks.write_text(blocks.read_text().replace("(4, 3)", "(4, 5)"))
    assert source_key(spec, PytorchFactoryLoader) != before
    after_edit = source_key(spec, PytorchFactoryLoader)
    write(factory_package / "layers" / "extra.py", "SCALE = 2\n")  # a new module the factory may import
    assert source_key(spec, PytorchFactoryLoader) != after_edit


def test_a_single_module_factory_keys_on_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "lone_factory_mod.py", "def build():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = job("lone_factory_mod:build")
    before = source_key(spec, PytorchFactoryLoader)
    write(tmp_path / "lone_factory_mod.py", "def build():\n    return 1\n")
    assert source_key(spec, PytorchFactoryLoader) != before


def test_source_key_carries_the_loaders_framework_versions(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    from convcli.core.lazy import package_version

    for loader in (KerasLoader, SavedModelLoader):
        versions = source_versions(loader)
        assert versions["tensorflow"] == package_version("tensorflow") is not None
        assert {"keras", "tf_keras"} <= set(versions)
    assert source_versions(PytorchFactoryLoader) == {"torch": package_version("torch")}
    assert set(source_versions(OnnxLoader)) == {"onnx", "onnxruntime"}

    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: only hashed")
    spec = job(str(model))
    before = source_key(spec, KerasLoader)
    real = keys.package_version
    monkeypatch.setattr(keys, "package_version", lambda m: "99.0" if m == "tensorflow" else real(m))
    assert source_key(spec, KerasLoader) != before  # a TensorFlow upgrade is a new source


def test_code_hash_follows_every_py_file_of_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "convcli"
    write(root / "__init__.py", "__version__ = '0.1.0'\n")
    write(root / "converters" / "to_x.py", "OPSET = 17\n")
    before = sha256_py_tree(root)
    write(root / "converters" / "__pycache__" / "to_x.cpython-312.pyc", "bytes")
    write(root / "README.txt", "not code")
    assert sha256_py_tree(root) == before  # byte-code and data files are not code
    write(root / "converters" / "to_x.py", "OPSET = 18\n")
    edited = sha256_py_tree(root)
    assert edited != before
    write(root / "runners" / "new.py", "")
    assert sha256_py_tree(root) != edited
    (root / "runners" / "new.py").rename(root / "runners" / "renamed.py")
    assert sha256_py_tree(root) not in (before, edited)


def test_every_key_carries_convclis_code_hash_not_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import convcli

    digest = cache.code_digest()
    assert digest == sha256_py_tree(Path(convcli.__file__).resolve().parent)
    key = cache.make_key("step", "x")
    monkeypatch.setattr(cache, "_CODE_DIGEST", "edited-code")
    assert cache.make_key("step", "x") != key
    monkeypatch.setattr(convcli, "__version__", "9.9.9")
    monkeypatch.setattr(cache, "_CODE_DIGEST", digest)
    assert cache.make_key("step", "x") == key


def test_source_key_carries_the_versions_of_what_the_factory_imports(tmp_path: Path) -> None:
    """transformers' random initialisation can change between releases; the file hashes cannot see that."""
    from convcli.job.keys import imported_versions

    (tmp_path / "factory.py").write_text("import os\nimport torch.nn as nn\nfrom transformers import BertConfig\n"
                                         "from . import helper\nfrom helper import x\n")
    (tmp_path / "helper.py").write_text("import numpy as np\nx = 1\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    found = imported_versions(sorted(tmp_path.glob("*.py")))
    assert set(found) == {"torch", "transformers", "numpy"}
    assert found["transformers"] == importlib.metadata.version("transformers")
