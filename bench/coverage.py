"""Coverage: which models convert to which targets and pass parity, as a table, for any list of models ("zoo").

    python bench/coverage.py                                   # bench/zoo/torchvision.yaml -> docs/coverage.md
    python bench/coverage.py --zoo my-zoo.yaml --doc my.md     # your own models
    python bench/coverage.py --shard 2/4                       # the second of four disjoint, balanced parts
    python bench/coverage.py --only resnet18,vit_b_16 --targets onnx,openvino
    python bench/coverage.py --render                          # only rewrite the table from the result files
    python bench/coverage.py --write-torchvision-zoo           # regenerate bench/zoo/torchvision.yaml

A zoo is a YAML list of entries (docs/coverage.md, "Coverage on your own models"). Each entry runs as one
`convcli convert` in a subprocess with its own empty cache, and its result is written to RESULTS/<name>.json as soon
as it finishes (written to a temporary file, then renamed): an interrupted run loses at most the model in progress,
and the next run skips every entry whose result file holds the same entry definition and convcli version (--rerun
runs them again). The table is rendered from every result file in RESULTS, so shards run on different machines are
merged by copying their result files into one folder and running --render.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from convcli import __version__ as CONVCLI_VERSION  # noqa: E402
from convcli.core.errors import ConvcliError, InputError  # noqa: E402
from convcli.core.lazy import package_version  # noqa: E402
from convcli.recipes.batch import parse_shard  # noqa: E402  (the same I/N as `convcli run --shard`)
from convcli.recipes.loader import describe_error, loc_text, yaml_line  # noqa: E402

TORCHVISION_ZOO = ROOT / "bench" / "zoo" / "torchvision.yaml"
RESULTS = ROOT / "bench" / "out" / "coverage"
DOC = ROOT / "docs" / "coverage.md"
DEFAULT_TARGETS = "onnx,openvino,ncnn,tflite"
RESULT_SCHEMA = "convcli.coverage-result/v1"
TARGET_ORDER = ["onnx", "openvino", "ncnn", "tflite", "tensorrt"]
BACKENDS = ["torch", "torchvision", "transformers", "onnx", "onnxruntime", "onnxslim", "openvino", "ncnn", "pnnx",
            "onnx2tf", "tensorflow", "ai_edge_litert", "tensorrt"]
BEGIN, END = "<!-- coverage:begin (written by bench/coverage.py) -->", "<!-- coverage:end -->"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


class ZooEntry(BaseModel):
    """One row of the coverage table: a model factory, its example inputs and the targets to try."""

    model_config = ConfigDict(extra="forbid")

    family: str = Field(min_length=1, description="Group in the table, e.g. 'resnet', 'segmentation', 'bert'.")
    name: str = Field(pattern=NAME_PATTERN, description="Unique row name (also the result file's name).")
    model: str = Field(description="FILE.py:FACTORY relative to the repository root: a factory returning a "
                                   "torch.nn.Module (anything `convcli convert` accepts as MODEL).")
    inputs: list[str] = Field(min_length=1, description="convcli --input specs, e.g. 'x:batch=2x3x224x224:float32'.")
    targets: str = Field(default=DEFAULT_TARGETS, description="convcli --to, e.g. 'onnx,openvino,ncnn,tflite'.")
    extra: list[str] = Field(default_factory=list, description="Extra `convcli convert` arguments.")
    note: str = Field(default="", description="What part of the model is converted, e.g. 'backbone+head, no NMS'.")
    params_m: float | None = Field(default=None, ge=0, description="Parameters in millions; only balances shards "
                                                                   "(bench/zoo/torchvision.yaml fills it in).")

    @field_validator("model")
    @classmethod
    def _file_and_factory(cls, value: str) -> str:
        path, sep, factory = value.rpartition(":")
        if not sep or not path or not factory or not path.endswith(".py"):
            raise ValueError("expected FILE.py:FACTORY, e.g. 'bench/tv_factory.py:resnet18'")
        if not resolve(path).is_file():
            raise ValueError(f"file {path} does not exist (paths are relative to the repository root, {ROOT})")
        return value

    def definition_hash(self, samples: int, options: Sequence[str]) -> str:
        """What the result depends on besides convcli itself: the entry as written (paths relative, so shards on
        other checkouts agree) and the run settings that change the command."""
        text = json.dumps({"entry": self.model_dump(exclude={"params_m", "note"}), "samples": samples,
                           "options": list(options)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def display_path(path: Path) -> str:
    """Relative to the repository root where it lies inside it (result files travel between machines)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def load_zoo(path: Path) -> list[ZooEntry]:
    """Read and validate one zoo file. InputError with 'FILE:LINE: entry N (NAME): FIELD: what is wrong'."""
    if not path.is_file():
        raise InputError(f"zoo file {path} does not exist", hint="pass --zoo FILE (a YAML list of entries)")
    text = path.read_text(encoding="utf-8")
    try:
        root, data = yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML: "
                         f"{getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: a zoo is a YAML list of entries (- family: ..., name: ..., model: ..., "
                         "inputs: [...])")
    entries = []
    for index, item in enumerate(data):
        label = f"entry {index}" + (f" ({item['name']})" if isinstance(item, dict) and item.get("name") else "")
        if not isinstance(item, dict):
            raise InputError(f"{path}: {label}: expected a mapping with family, name, model, inputs")
        try:
            entries.append(ZooEntry.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            node = root.value[index] if isinstance(root, yaml.SequenceNode) else None
            line = yaml_line(node, tuple(err["loc"]))
            more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
            raise InputError(f"{path}{f':{line}' if line else ''}: {label}: {loc_text(tuple(err['loc']))}: "
                             f"{describe_error(err)}{more}") from None
    return entries


def load_zoos(paths: Iterable[Path]) -> list[ZooEntry]:
    """Every entry of every file, in order; a name used twice (in one file or across files) is an error."""
    entries: list[ZooEntry] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for entry in load_zoo(path):
            if entry.name in seen:
                raise InputError(f"{path}: entry name {entry.name!r} is also used in {seen[entry.name]}",
                                 hint="names must be unique: they name the result files")
            seen[entry.name] = path
            entries.append(entry)
    return entries


# -- the torchvision zoo ------------------------------------------------------------------------------------

def torchvision_family(name: str) -> str:
    """resnet18 -> resnet, efficientnet_v2_s -> efficientnet, regnet_y_400mf -> regnet, wide_resnet50_2 ->
    wide_resnet, vit_b_16 -> vit: the name up to its first digit or underscore."""
    match = re.match(r"(wide_resnet|[a-z]+?)(?=\d|_|$)", name)
    return match.group(1) if match else name


def torchvision_entries() -> list[ZooEntry]:
    """Every classification model in torchvision.models, random weights (bench/tv_factory.py), at the input size
    of recipes/models/torchvision_models.py:input_size, with its parameter count from the weights' metadata."""
    import torchvision

    sys.path.insert(0, str(ROOT / "recipes" / "models"))
    from torchvision_models import input_size

    entries = []
    for name in torchvision.models.list_models(module=torchvision.models):
        size = input_size(name)
        params = torchvision.models.get_model_weights(name).DEFAULT.meta.get("num_params")
        entries.append(ZooEntry(family=torchvision_family(name), name=name, model=f"bench/tv_factory.py:{name}",
                                inputs=[f"x:batch=2x3x{size}x{size}:float32"],
                                params_m=round(params / 1e6, 1) if params else None))
    return entries


def write_zoo(entries: list[ZooEntry], path: Path, header: str) -> None:
    rows = [e.model_dump(exclude_defaults=True) for e in entries]
    text = yaml.safe_dump(rows, sort_keys=False, width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text)


TORCHVISION_HEADER = """\
Every torchvision classification model (torchvision.models.list_models(module=torchvision.models)), random
weights. Written by `python bench/coverage.py --write-torchvision-zoo`; edit or copy it freely.
Input size: the smallest crop size of the model's published weights (recipes/models/torchvision_models.py).
params_m (parameters, millions, from the weights' metadata) only balances --shard."""


# -- choosing what to run -----------------------------------------------------------------------------------

def shard(entries: list[ZooEntry], index: int, count: int) -> list[ZooEntry]:
    """Shard ``index`` (1-based) of ``count``: disjoint, together complete, the same on every machine. Entries are
    dealt largest first (params_m; an entry without it counts as the median) to the shard with the least total so
    far, ties to the lower shard: the shards' parameter totals come out close. Returned in zoo order."""
    known = sorted(e.params_m for e in entries if e.params_m is not None)
    default = known[len(known) // 2] if known else 1.0
    cost = [e.params_m if e.params_m is not None else default for e in entries]
    totals = [0.0] * count
    owner = [0] * len(entries)
    for i in sorted(range(len(entries)), key=lambda i: (-cost[i], i)):
        target = min(range(count), key=lambda s: (totals[s], s))
        owner[i] = target
        totals[target] += cost[i]
    return [e for i, e in enumerate(entries) if owner[i] == index - 1]


def one_per_family(entries: list[ZooEntry]) -> list[ZooEntry]:
    """The smallest model of each family (params_m; the first in zoo order where it is missing)."""
    picked: dict[str, ZooEntry] = {}
    for e in entries:
        best = picked.get(e.family)
        if best is None or (e.params_m is not None and best.params_m is not None and e.params_m < best.params_m):
            picked[e.family] = e
    return [e for e in entries if picked.get(e.family) is e]


def select(entries: list[ZooEntry], only: str | None, families: str | None) -> list[ZooEntry]:
    if families:
        wanted = {f.strip() for f in families.split(",") if f.strip()}
        unknown = sorted(wanted - {e.family for e in entries})
        if unknown:
            raise InputError(f"--family: no entry has family {', '.join(unknown)}",
                             hint="families here: " + ", ".join(sorted({e.family for e in entries})))
        entries = [e for e in entries if e.family in wanted]
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in names if n not in {e.name for e in entries}]
        if unknown:
            raise InputError(f"--only: no entry named {', '.join(unknown)} in the zoo file(s)"
                             + (" (with --family)" if families else ""))
        entries = [e for e in entries if e.name in names]
    return entries


# -- running one entry ----------------------------------------------------------------------------------------

def requested_ids(targets: str) -> list[str]:
    """'onnx,tflite:fp32+fp16' -> ['onnx-fp32', 'tflite-fp32', 'tflite-fp16']: the rows a report would have."""
    ids = []
    for part in targets.split(","):
        fmt, _, precisions = part.strip().partition(":")
        ids += [f"{fmt}-{p}" for p in (precisions.split("+") if precisions else ["fp32"])]
    return ids


def one_line(text: str | None, limit: int = 400) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def target_cells(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per report row (intermediate rows left out): status, max abs err, the one-line reason when it did not pass,
    the route (``chain``) and the seconds of each step on it; ``format_s`` is the time of the steps that produce
    the row's own format (for TFLite: onnx2tf), ``convert_s`` the whole chain's."""
    steps = report.get("steps", [])
    cells: dict[str, dict[str, Any]] = {}
    for row in report.get("artifacts", []):
        if "-for-" in row["id"]:
            continue
        chain = []
        for step_name in [re.sub(r"\s*\[.*\]$", "", n) for n in row.get("chain", "").split(" -> ")[1:]]:
            same = [s for s in steps if s["name"] == step_name]
            step = next((s for s in same if s.get("options", {}).get("precision") == row["precision"]),
                        same[0] if same else None)
            if step is not None:
                chain.append({"name": step_name, "target": step["target"], "status": step["status"],
                              "seconds": step["seconds"]})
        reason = None
        if row["status"] != "passed":
            reason = one_line(row.get("error") or "; ".join(row.get("failures") or [])
                              or (row.get("parity") or {}).get("message") or row["status"])
        cells[row["id"]] = {
            "format": row["format"], "precision": row["precision"], "status": row["status"],
            "max_abs_err": (row.get("parity") or {}).get("max_abs_err"), "reason": reason,
            "chain": row.get("chain", ""), "steps": chain,
            "convert_s": round(sum(s["seconds"] for s in chain), 2),
            "format_s": round(sum(s["seconds"] for s in chain if s["target"] == row["format"]), 2)
            if chain else None,
        }
    return cells


def run_convcli(cmd: list[str], log: Path, timeout_s: float) -> tuple[int, float, bool]:
    """Run ``cmd`` in its own process group with an empty cache of its own (removed afterwards); stop the whole
    group (onnx2tf and pnnx run in children) on timeout or when this process is interrupted."""
    cache = tempfile.mkdtemp(prefix="convcli-coverage-cache-")
    t0 = time.perf_counter()
    timed_out = False
    try:
        with log.open("w") as fh:
            # cwd and PYTHONPATH: `-m convcli` is this checkout's convcli, whatever the venv has installed
            env = {**os.environ, "CONVCLI_CACHE_DIR": cache,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                                    env=env)
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                code = _stop(proc)
            except BaseException:
                _stop(proc)
                raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return code, time.perf_counter() - t0, timed_out


def _stop(proc: subprocess.Popen[bytes]) -> int:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode if proc.returncode is not None else -9


def options_for(entry: ZooEntry, options: Sequence[str]) -> list[str]:
    """The ``-O`` options that concern this entry: convcli refuses ``-O FORMAT.KEY=VALUE`` for a format none of the
    entry's targets has (a typo guard), so one run over a mixed zoo (``-O tflite.timeout_s=300``) passes
    ``tflite.*`` only to entries with a TFLite target. Step-named options (``TfliteFromOnnx.KEY``) always go."""
    formats = {t.strip().split("@")[0].split(":")[0] for t in entry.targets.split(",")}
    return [o for o in options if not o.split(".", 1)[0].islower() or o.split(".", 1)[0] in formats]


def run_entry(entry: ZooEntry, results: Path, samples: int, options: Sequence[str], timeout_s: float,
              keep_artifacts: bool, zoo: str = "") -> dict[str, Any]:
    """Convert one entry and write RESULTS/<name>.json (plus reports/<name>.json and logs/<name>.log)."""
    path, _, factory = entry.model.rpartition(":")
    for sub in ("logs", "reports"):
        (results / sub).mkdir(parents=True, exist_ok=True)
    outdir = results / "artifacts" / entry.name if keep_artifacts else \
        Path(tempfile.mkdtemp(prefix=f"convcli-coverage-{entry.name}-"))
    cmd = [sys.executable, "-m", "convcli", "convert", f"{resolve(path)}:{factory}", "--to", entry.targets,
           "-o", str(outdir), "--no-latency", "--samples", str(samples)]
    for spec in entry.inputs:
        cmd += ["--input", spec]
    for opt in options_for(entry, options):
        cmd += ["-O", opt]
    cmd += entry.extra
    log = results / "logs" / f"{entry.name}.log"
    try:
        code, seconds, timed_out = run_convcli(cmd, log, timeout_s)
        report_path = outdir / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        if report is not None:
            atomic_write(results / "reports" / f"{entry.name}.json", json.dumps(report, indent=1))
    finally:
        if not keep_artifacts:
            shutil.rmtree(outdir, ignore_errors=True)
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
    if report is not None:
        cells = target_cells(report)
    else:  # no report: every requested row is an error with the reason the process ended
        why = (f"convcli was stopped after the coverage timeout of {timeout_s:.0f} s (--timeout-s)" if timed_out
               else f"convcli exited {code} without a report: {' | '.join(tail)}")
        cells = {rid: {"format": rid.split("-")[0], "precision": rid.split("-", 1)[1], "status": "error",
                       "max_abs_err": None, "reason": one_line(why), "chain": "", "steps": [], "convert_s": None,
                       "format_s": None} for rid in requested_ids(entry.targets)}
    result = {
        "schema": RESULT_SCHEMA, "name": entry.name, "family": entry.family, "zoo": zoo,
        "entry": entry.model_dump(), "entry_hash": entry.definition_hash(samples, options),
        "convcli_version": CONVCLI_VERSION, "exit": code, "seconds": round(seconds, 1), "timed_out": timed_out,
        "timeout_s": timeout_s, "samples": samples, "options": list(options),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_text(),
        "versions": backend_versions(), "command": " ".join(cmd[2:]), "targets": cells,
        "log_tail": one_line(" | ".join(tail), 600),
    }
    atomic_write(results / f"{entry.name}.json", json.dumps(result, indent=1))
    return result


def atomic_write(path: Path, text: str) -> None:
    """Write then rename: an interrupted run leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def machine_text() -> str:
    from bench.run_bench import machine  # the CPU line of docs/benchmarks.md, one implementation

    return machine()


def backend_versions() -> dict[str, str]:
    from convcli.converters.onnx_to_tflite import onnx2tf_direct_version

    direct = onnx2tf_direct_version()  # onnx2tf 2.x beside 1.x, in its own folder (TfliteFromOnnxDirect)
    return {"convcli": CONVCLI_VERSION, **{m: v for m in BACKENDS if (v := package_version(m))},
            **({"onnx2tf (direct)": direct} if direct else {})}


def done(entry: ZooEntry, results: Path, samples: int, options: Sequence[str], timeout_s: float) -> bool:
    """A result for this exact entry definition and convcli version exists (one stopped by a shorter timeout than
    this run's does not count)."""
    result = read_result(results / f"{entry.name}.json")
    if result is None:
        return False
    return (result["entry_hash"] == entry.definition_hash(samples, options)
            and result["convcli_version"] == CONVCLI_VERSION
            and not (result.get("timed_out") and result.get("timeout_s", 0) < timeout_s))


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == RESULT_SCHEMA else None


def read_results(results: Path) -> list[dict[str, Any]]:
    return [r for p in sorted(results.glob("*.json")) if (r := read_result(p)) is not None]


# -- the table ------------------------------------------------------------------------------------------------

def natural_key(text: str) -> list[Any]:
    """resnet18 < resnet34 < resnet101."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def column_label(rid: str) -> str:
    """'tflite-fp32' -> 'tflite'; a named path 'tflite-fp32@TfliteFromOnnxDirect' -> 'tflite @TfliteFromOnnxDirect'."""
    label, _, via = rid.partition("@")
    return label.removesuffix("-fp32") + (f" @{via}" if via else "")


def input_text(spec: str, count: int) -> str:
    """'x:batch=2x3x224x224:float32' -> '2x3x224x224'; with several inputs the name stays: 'input_ids 2x16'."""
    name, _, rest = spec.partition(":")
    shape = re.sub(r"(?:^|(?<=x))[A-Za-z_]\w*=", "", rest.split(":")[0]) if rest else spec  # batch=2xseq=16 -> 2x16
    return f"{name} {shape}" if count > 1 else shape


def cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    text = cell["status"]
    if cell["status"] == "passed" and cell.get("max_abs_err") is not None:
        text += f" ({cell['max_abs_err']:.0e})"
    route = re.search(r"\[via (\w+)", cell.get("chain") or "")  # a fallback route: ncnn via ONNX, tflite via direct
    if route:
        text += " via " + {"TfliteFromOnnxDirect": "direct"}.get(route.group(1), route.group(1))
    if cell["format"] == "tflite" and cell.get("format_s") is not None:
        text += f", {cell['format_s']:.0f} s"
    return text


def render(results: list[dict[str, Any]], missing: Sequence[str] = ()) -> str:
    """The coverage table: one row per model, grouped by family (families and models in natural order), a cell
    per target, per-target totals, then the reason for every cell that did not pass, the machines and versions."""
    columns = sorted({rid for r in results for rid in r["targets"]},
                     key=lambda rid: (TARGET_ORDER.index(rid.split("-")[0]) if rid.split("-")[0] in TARGET_ORDER
                                      else len(TARGET_ORDER), rid.split("-")[0], rid))
    rows = sorted(results, key=lambda r: (natural_key(r["family"]), natural_key(r["name"])))
    lines = [f"{len(rows)} models, {len({r['family'] for r in rows})} families. A cell: passed (max abs error vs "
             "PyTorch at fp32 tolerances on the inputs below), failed (converted, parity did not hold), error (the "
             "conversion failed) or unavailable (a backend is missing here); the reason for every cell that did not "
             "pass is listed under the table. *via ONNX* / *via direct*: the file came from the fallback route (ncnn "
             "from the exported ONNX; TFLite from onnx2tf 2.x flatbuffer_direct after onnx2tf 1.x failed). TFLite "
             "cells add the onnx2tf conversion seconds. *s*: the whole "
             "`convcli convert` (export, every target, parity).", "",
             "| family | model | input | " + " | ".join(column_label(c) for c in columns) + " | s |",
             "|---|---|---|" + "---|" * (len(columns) + 1)]
    previous = None
    for r in rows:
        family = f"**{r['family']}**" if r["family"] != previous else ""
        previous = r["family"]
        inputs = ", ".join(input_text(s, len(r["entry"]["inputs"])) for s in r["entry"]["inputs"])
        name = r["name"] + (f" ({r['entry']['note']})" if r["entry"].get("note") else "")
        lines.append(f"| {family} | {name} | {inputs} | "
                     + " | ".join(cell_text(r["targets"].get(c)) for c in columns) + f" | {r['seconds']:.0f} |")
    totals = []
    for c in columns:
        tried = [r["targets"][c] for r in rows if c in r["targets"]]
        passed = sum(1 for cell in tried if cell["status"] == "passed")
        totals.append(f"{passed}/{len(tried)} ({100 * passed / len(tried):.0f}%)" if tried else "-")
    lines += [f"| | **passed** | | {' | '.join(totals)} | |", ""]
    if missing:
        lines += [f"Not measured yet ({len(missing)}): " + ", ".join(sorted(missing, key=natural_key)) + ".", ""]
    lines += ["### Reasons for every cell that did not pass", ""]
    reasons = 0
    for r in rows:
        by_reason: dict[str, list[str]] = {}
        for c in columns:
            cell = r["targets"].get(c)
            if cell is not None and cell["status"] != "passed":
                by_reason.setdefault(cell["reason"] or cell["status"], []).append(column_label(c))
        for reason, cols in by_reason.items():
            lines.append(f"- {r['name']} / {', '.join(cols)}: {reason}")
            reasons += 1
    if not reasons:
        lines.append("None: every cell passed.")
    machines = sorted({r["machine"] for r in rows})
    versions: dict[str, set[str]] = {}
    for r in rows:
        for k, v in r["versions"].items():
            versions.setdefault(k, set()).add(v)
    lines += ["", "### Where it was measured", "",
              *(f"- {m} ({sum(1 for r in rows if r['machine'] == m)} models)" for m in machines),
              "- " + ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in versions.items()),
              f"- settings: `--no-latency --samples {'/'.join(sorted({str(r['samples']) for r in rows}))}`"
              + "".join(sorted({f", `-O {o}`" for r in rows for o in r["options"]}))
              + f"; finished {min(r['finished'] for r in rows)[:10]} to {max(r['finished'] for r in rows)[:10]}"
              if rows else "- no results"]
    return "\n".join(lines) + "\n"


def write_doc(doc: Path, table: str) -> None:
    """Replace what lies between the coverage markers in ``doc`` (created with just the table when it does not
    exist or has no markers), so hand-written text around the table survives a re-render."""
    block = f"{BEGIN}\n{table}{END}"
    text = doc.read_text() if doc.exists() else "# Coverage\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(doc, text)


# -- the command ----------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", type=Path, action="append", help="A zoo YAML file (repeatable; default "
                                                             "bench/zoo/torchvision.yaml).")
    p.add_argument("--shard", default="1/1", help="I/N: run only the I-th of N disjoint parts (default 1/1).")
    p.add_argument("--only", help="Comma-separated entry names.")
    p.add_argument("--family", help="Comma-separated families.")
    p.add_argument("--one-per-family", action="store_true", help="Only the smallest model of each family.")
    p.add_argument("--targets", help="Override every entry's targets (convcli --to).")
    p.add_argument("-O", "--option", action="append", default=[], metavar="FORMAT.KEY=VALUE",
                   help="Passed to every convert as -O (e.g. tflite.timeout_s=300).")
    p.add_argument("--samples", type=int, default=4, help="Parity samples per model (default 4).")
    p.add_argument("--timeout-s", type=float, default=3600, help="Seconds one model may take (default 3600).")
    p.add_argument("--rerun", action="store_true", help="Run entries that already have a result.")
    p.add_argument("--list", action="store_true", help="Print what this shard would run; run nothing.")
    p.add_argument("--render", action="store_true", help="Only rewrite the table from the result files.")
    p.add_argument("--no-render", action="store_true", help="Do not rewrite the table after running.")
    p.add_argument("--results", type=Path, default=RESULTS, help="Folder of result files (default bench/out/coverage).")
    p.add_argument("--doc", type=Path, default=DOC, help="Markdown file the table goes to (default docs/coverage.md).")
    p.add_argument("--keep-artifacts", action="store_true", help="Keep each model's converted files under "
                                                                 "RESULTS/artifacts (large).")
    p.add_argument("--write-torchvision-zoo", nargs="?", const=TORCHVISION_ZOO, type=Path, metavar="PATH",
                   help="Write every torchvision classifier as a zoo file (default bench/zoo/torchvision.yaml).")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    console = console or Console(highlight=False, soft_wrap=True)
    try:
        return _main(parse_args(argv), console)
    except ConvcliError as exc:
        console.print(f"[bold red]error:[/] {exc.one_line()}", soft_wrap=True)
        return exc.exit_code


def _main(args: argparse.Namespace, console: Console) -> int:
    if args.write_torchvision_zoo:
        entries = torchvision_entries()
        write_zoo(entries, args.write_torchvision_zoo, TORCHVISION_HEADER)
        console.print(f"wrote {args.write_torchvision_zoo} ({len(entries)} models, "
                      f"{len({e.family for e in entries})} families)")
        return 0
    zoos = args.zoo or [TORCHVISION_ZOO]
    everything = load_zoos(zoos)
    zoo_of = {e.name: display_path(z) for z in zoos for e in load_zoo(z)}
    if args.render:
        return render_doc(args, console, everything)
    index, count = parse_shard(args.shard)
    chosen = select(everything, args.only, args.family)
    if args.one_per_family:
        chosen = one_per_family(chosen)
    chosen = shard(chosen, index, count)
    if args.targets:
        chosen = [e.model_copy(update={"targets": args.targets}) for e in chosen]
    options = args.option or []
    todo = [e for e in chosen if args.rerun or not done(e, args.results, args.samples, options, args.timeout_s)]
    console.print(f"shard {index}/{count}: {len(chosen)} of {len(everything)} entries, {len(chosen) - len(todo)} "
                  f"already done (same entry, convcli {CONVCLI_VERSION}), {len(todo)} to run; results in "
                  f"{args.results}")
    if args.list:
        for e in chosen:
            console.print(f"  {'run ' if e in todo else 'done'} {e.family}/{e.name} {e.params_m or '?'}M "
                          f"{' '.join(e.inputs)} -> {e.targets}")
        return 0
    started = time.perf_counter()
    for position, entry in enumerate(todo, 1):
        with console.status(f"[{position}/{len(todo)}] {entry.name}: converting to {entry.targets}"):
            result = run_entry(entry, args.results, args.samples, options, args.timeout_s, args.keep_artifacts,
                               zoo_of.get(entry.name, ""))
        cells = "  ".join(f"{column_label(rid)} {_colour(c['status'])}" + (f" {c['format_s']:.0f}s" if
                          c["format"] == "tflite" and c.get("format_s") is not None else "")
                          for rid, c in result["targets"].items())
        console.print(f"[{position}/{len(todo)}] shard {index}/{count} {entry.name} {result['seconds']:.0f}s "
                      f"(total {time.perf_counter() - started:.0f}s, exit {result['exit']}): {cells}")
    if args.no_render:
        return 0
    return render_doc(args, console, everything)


def _colour(status: str) -> str:
    return {"passed": "[green]passed[/]", "failed": "[red]failed[/]", "error": "[red]error[/]"}.get(
        status, f"[yellow]{status}[/]")


def render_doc(args: argparse.Namespace, console: Console, entries: list[ZooEntry]) -> int:
    results = read_results(args.results)
    if not results:
        raise InputError(f"no coverage results in {args.results}", hint="run bench/coverage.py first, or copy "
                                                                        "other machines' result files there")
    have = {r["name"] for r in results}
    write_doc(args.doc, render(results, missing=[e.name for e in entries if e.name not in have]))
    console.print(f"wrote {args.doc} ({len(results)} models from {args.results})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
