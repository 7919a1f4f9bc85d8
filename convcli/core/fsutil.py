"""File helpers: atomic writes (temporary path, then rename) and hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """Hash of a file, or of every file under a folder (names and contents), for manifests and caches."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()


def sha256_py_tree(root: Path) -> str:
    """Hash of every ``.py`` file under ``root`` (relative paths and contents): the code of a package, without
    its byte-code caches or data files."""
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*.py") if p.is_file()):
        digest.update(f.relative_to(root).as_posix().encode())
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()
