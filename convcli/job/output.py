"""What a run leaves in OUTDIR: artifacts staged in a temporary folder, then moved in, and the manifest and
report written atomically."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from convcli import __version__
from convcli.core.artifact import Artifact
from convcli.core.executor import StepOutcome
from convcli.core.fsutil import atomic_write_text, sha256_tree
from convcli.core.lazy import package_version
from convcli.core.planner import Plan
from convcli.job.source import LazySource
from convcli.recipes.schema import JobSpec
from convcli.reports.model import Report, StepRecord

MANIFEST_SCHEMA = "convcli.manifest/v1"
PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxslim", "onnxscript", "openvino", "nncf", "ncnn",
            "pnnx", "tensorflow", "ai_edge_litert", "onnx2tf", "tf2onnx", "numpy", "tensorrt")


def stage(the_plan: Plan, outcomes: dict[str, StepOutcome], source: LazySource,
           final: Path) -> dict[str, Artifact | str]:
    """Copy each target's files into final/<id>/ ; a failed target maps to its error line."""
    staged: dict[str, Artifact | str] = {}
    for target in the_plan.targets:
        label = target.request.label
        if target.unavailable:
            staged[label] = f"unavailable: {target.unavailable}"
            continue
        artifact = outcomes[target.final_step].artifact if target.final_step else source.get()
        if artifact is None:
            assert target.final_step is not None
            failed = next(outcomes[s] for s in target.chain if outcomes[s].error and not outcomes[s].skipped)
            staged[label] = failed.error or "failed"
            continue
        folder = final / label
        folder.mkdir(parents=True, exist_ok=True)
        moved: list[Path] = []
        for f in artifact.all_files():
            dest = folder / f.name
            shutil.copy2(f, dest)
            moved.append(dest)
        primary = folder / artifact.path.name if artifact.path is not None else None
        staged[label] = artifact.derive(path=primary, files=moved, precision=target.request.precision)
    return staged


def step_records(the_plan: Plan, outcomes: dict[str, StepOutcome]) -> list[StepRecord]:
    records = []
    for sid, planned in the_plan.steps.items():
        o = outcomes[sid]
        records.append(StepRecord(id=sid, name=planned.step.name, source=planned.step.source,
                                  target=planned.step.target,
                                  status="skipped" if o.skipped else ("error" if o.error else "ok"),
                                  cached=o.cached, seconds=round(o.seconds, 3),
                                  options=planned.options.model_dump(mode="json"),
                                  details=jsonable(o.details), error=o.error))
    return records


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def earlier_outputs(output: Path) -> list[str]:
    """The ``<id>/<file>`` entries the previous run's manifest says convcli wrote into OUTDIR (none when there is
    no readable manifest): the only things in OUTDIR a run may remove besides its own folders."""
    try:
        manifest = json.loads((output / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        return []
    entries = manifest.get("outputs_sha256")
    return [e for e in entries if isinstance(e, str)] if isinstance(entries, dict) else []


def remove_stale(output: Path, entries: list[str], kept: set[str]) -> None:
    """Remove what an earlier run wrote into a target folder this run did not produce (a target now failed or no
    longer asked for), so OUTDIR never shows an old artifact beside a report that says "error". Only the listed
    files go; the folder too when nothing else (a user's file) is left in it."""
    root = output.resolve()
    folders = set()
    for entry in entries:
        parts = Path(entry).parts
        if len(parts) != 2 or parts[0] in kept or any(p in ("", ".", "..") for p in parts):
            continue
        folder, path = output / parts[0], output / parts[0] / parts[1]
        if folder.is_symlink() or folder.resolve().parent != root:  # pointing elsewhere: not ours to delete
            continue
        folders.add(folder)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


BEST_LINK = "best"


def link_best(output: Path, folder: str) -> bool:
    """Point OUTDIR/best at ``folder`` (a relative symlink, so OUTDIR can be moved or archived), replacing an
    earlier link atomically (a new link renamed over the old). False where symlinks cannot be made (some Windows
    and network filesystems) or OUTDIR/best is not a link (a user's own file or folder, left alone)."""
    link = output / BEST_LINK
    if link.exists() and not link.is_symlink():
        return False
    tmp = output / f".{BEST_LINK}.convcli-tmp"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(folder, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def unlink_best(output: Path) -> None:
    """Remove OUTDIR/best when it is a link (an earlier run's choice); a user's own ``best`` is not ours."""
    link = output / BEST_LINK
    if link.is_symlink():
        link.unlink()


def finalize(report: Report, spec: JobSpec, final: Path, output: Path) -> None:
    """Move artifacts into OUTDIR (replacing earlier runs' folders of the same id), remove what earlier runs
    wrote for targets this run did not produce, point OUTDIR/best at the best artifact's folder (or remove it when
    no row passed), then write the manifest and report atomically. OUTDIR then holds exactly the artifacts
    report.json lists, plus the report and manifest files, the ``best`` link and the user's own files."""
    output.mkdir(parents=True, exist_ok=True)
    earlier = earlier_outputs(output)
    outputs: dict[str, str] = {}
    produced = sorted(p for p in final.iterdir() if p.is_dir()) if final.exists() else []
    remove_stale(output, earlier, {p.name for p in produced})
    for folder in produced:
        dest = output / folder.name
        if dest.exists():
            trash = output / f".{folder.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, dest)
        for f in sorted(dest.iterdir()):
            outputs[f"{folder.name}/{f.name}"] = sha256_tree(f)
    for row in report.artifacts:
        if row.path:
            row.path = f"{row.id}/{row.path}"
        row.files = [f"{row.id}/{f}" for f in row.files]
    best = report.best_artifact
    if best is not None:
        chosen = next((r for r in report.artifacts if r.id == best.id), None)
        if chosen is None or chosen.status != "passed" or not (output / best.folder).is_dir():
            report.best_artifact = best = None  # never a link to a failed row or to a folder this run did not write
        else:
            best.path = chosen.path
    if best is not None:
        best.link = BEST_LINK if link_best(output, best.folder) else None
    else:
        unlink_best(output)
    inputs: dict[str, str] = {}
    model_file = spec.source.model.split(":")[0]
    for key, p in (("model", Path(model_file)), ("weights", spec.source.weights), ("parity", spec.data.parity),
                   ("validation", spec.data.validation), ("calibration", spec.data.calibration)):
        if p is not None and Path(p).exists():
            inputs[key] = sha256_tree(Path(p))
    manifest = {
        "schema": MANIFEST_SCHEMA, "convcli_version": __version__, "created": report.created,
        "command": report.command, "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": {m: package_version(m) for m in PACKAGES if package_version(m)},
        "job": spec.model_dump(mode="json"), "inputs_sha256": inputs, "outputs_sha256": outputs,
        "best": ({"id": best.id, "path": best.path, "folder": best.folder, "link": best.link}
                 if best is not None else None),
    }

    atomic_write_text(output / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    atomic_write_text(output / "report.json", report.to_json() + "\n")
