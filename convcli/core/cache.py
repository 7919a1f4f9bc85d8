"""A content-addressed cache of step outputs and measurements.

A step's key is made of its input's key, its name and options, the versions of the packages it uses and
a hash of convcli's own code (every key carries it: a changed converter or runner must not reuse what the old
code built or measured; the version string does not change with each edit); the source's key is made of the
hashes of its files. So an unchanged re-run hits every
step, and changing one target's option rebuilds only the steps after it. Every entry stores the sha256 of
its files and is checked before use: a corrupt entry is removed and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import convcli
from convcli.core.artifact import Artifact
from convcli.core.fsutil import sha256_file, sha256_py_tree
from convcli.core.tensors import TensorSpec

ENTRY_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("CONVCLI_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convcli"


_CODE_DIGEST: str | None = None  # convcli's code hash, computed once per process


def code_digest() -> str:
    """sha256 of every ``.py`` file of the convcli package this process runs (hashed on first use)."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        _CODE_DIGEST = sha256_py_tree(Path(convcli.__file__).resolve().parent)
    return _CODE_DIGEST


def make_key(*parts: Any) -> str:
    blob = json.dumps([ENTRY_VERSION, code_digest(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _dump_artifact(artifact: Artifact, names: list[str]) -> dict[str, Any]:
    return {"format": artifact.format, "precision": artifact.precision,
            "path": artifact.path.name if artifact.path is not None else None, "files": names,
            "inputs": [s.model_dump() for s in artifact.inputs], "output_names": artifact.output_names,
            "layout": artifact.layout, "output_layout": artifact.output_layout, "details": artifact.details}


class Cache:
    """Entries live in ``root/steps/<key>/`` (files + entry.json) and ``root/measure/<key>.json``."""

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled
        self.rebuilt: list[str] = []  # keys of corrupt entries found and dropped

    # -- step outputs --------------------------------------------------------------------
    def load_artifact(self, key: str, workdir: Path) -> tuple[Artifact, float, dict[str, Any]] | None:
        """The cached artifact copied into ``workdir``, the seconds the step originally took and the step's
        details, or None."""
        if not self.enabled:
            return None
        entry = self.root / "steps" / key
        meta_path = entry / "entry.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            for name, digest in meta["sha256"].items():
                if sha256_file(entry / name) != digest:
                    raise ValueError(f"checksum mismatch for {name}")
        except (OSError, ValueError, KeyError):
            self._drop(entry, key)
            return None
        workdir.mkdir(parents=True, exist_ok=True)
        for name in meta["artifact"]["files"]:
            shutil.copy2(entry / name, workdir / name)
        a = meta["artifact"]
        artifact = Artifact(format=a["format"], path=workdir / a["path"] if a["path"] else None,
                            inputs=[TensorSpec.model_validate(s) for s in a["inputs"]],
                            output_names=a["output_names"], precision=a["precision"],
                            files=[workdir / n for n in a["files"]], layout=a["layout"],
                            output_layout=a["output_layout"], details=a["details"])
        return artifact, float(meta.get("seconds", 0.0)), meta.get("step_details", {})

    def store_artifact(self, key: str, artifact: Artifact, seconds: float,
                       step_details: dict[str, Any] | None = None) -> None:
        """Store a step's output; in-memory artifacts (``obj``) are not cacheable and are skipped."""
        if not self.enabled or artifact.obj is not None:
            return
        files = artifact.all_files()
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            return
        final = self.root / "steps" / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            digests = {}
            for f in files:
                shutil.copy2(f, tmp / f.name)
                digests[f.name] = sha256_file(tmp / f.name)
            meta = {"artifact": _dump_artifact(artifact, names), "sha256": digests, "seconds": seconds,
                    "step_details": step_details or {}}
            (tmp / "entry.json").write_text(json.dumps(meta, default=str))
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- measurements ----------------------------------------------------------------------
    def load_json(self, kind: str, key: str) -> Any | None:
        if not self.enabled:
            return None
        path = self.root / kind / f"{key}.json"
        if not path.is_file():
            return None
        try:
            wrapper = json.loads(path.read_text())
            body = json.dumps(wrapper["data"], sort_keys=True)
            if hashlib.sha256(body.encode()).hexdigest() != wrapper["sha256"]:
                raise ValueError("checksum mismatch")
            return wrapper["data"]
        except (OSError, ValueError, KeyError):
            self._drop(path, key)
            return None

    def store_json(self, kind: str, key: str, data: Any) -> None:
        if not self.enabled:
            return
        body = json.dumps(data, sort_keys=True, default=str)
        wrapper = {"sha256": hashlib.sha256(body.encode()).hexdigest(), "data": json.loads(body)}
        path = self.root / kind / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(wrapper))
        os.replace(tmp, path)

    def _drop(self, path: Path, key: str) -> None:
        self.rebuilt.append(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
