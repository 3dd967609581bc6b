"""Export a finished run's model to a file that runs without freezetune: TorchScript
(``torch.jit.load``), an ExportedProgram (``torch.export.load``) or ONNX (onnxruntime),
with a JSON sidecar holding the class names and the preprocessing.

An export is only kept once it is proven: the artifact is serialised to memory, loaded
back from those bytes the way a user without freezetune would load the file, and run on a
real batch and on batches of other sizes (the batch dimension is dynamic); only when every
output is within ``atol`` of the eager model are the artifact and its sidecar written, by
the one writer (freezetune.utils.files: the bytes checked to fit, a temporary file, a
rename). Any failure leaves nothing behind.

The exporters never get a path: torch's C++ file writer aborts the whole process when the
disk fills up (SIGABRT, a C++ stack trace, its half-written temporary left behind), and
writing to a ``BytesIO`` cannot."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from freezetune.config import ConfigError
from freezetune.data import build_loaders
from freezetune.infer.runs import RunModel
from freezetune.models import has_adapters, merged_copy
from freezetune.utils.errors import RunFault
from freezetune.utils.files import check_writable, write_files

__all__ = [
    "DEFAULT_ATOL",
    "SIDECAR_FORMAT",
    "EXPORT_FORMATS",
    "ExportFailed",
    "ExportMismatch",
    "ExportResult",
    "check_batch",
    "default_export_path",
    "export_model",
    "load_snippet",
    "require_onnx",
    "sidecar_path",
]

# --format -> the file name under RUN/export/ (the extension says how to load it).
EXPORT_FORMATS = {"torchscript": "model.torchscript.pt", "exported_program": "model.pt2", "onnx": "model.onnx"}
DEFAULT_ATOL = 1e-5
SIDECAR_FORMAT = "freezetune.export/1"  # the sidecar's own format tag
ONNX_INPUT, ONNX_OUTPUT = "images", "logits"  # the ONNX graph's names, for session.run feeds
_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # pyproject's `onnx` extra
_ONNX_MAX_BYTES = 2**31  # protobuf's limit on one message: an ONNX file with its weights inside
# torch 2.14 deprecates torch.jit: trace warns once for itself and once per traced method
# (trace_method, which the user never called). The deprecation is real, so it is said
# once, in our own words, in ExportResult.notes; torch's copies are noise beside it.
_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


class ExportFailed(RunFault, RuntimeError):
    """The exporter could not write the model in the format asked for (an unsupported op)."""


class ExportMismatch(RunFault, RuntimeError):
    """The written file's outputs differ from the eager model's by more than the tolerance."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how closely the file reproduces the model."""

    format: str
    path: Path  # the artifact
    sidecar: Path  # its JSON: classes, preprocessing, input shape, the check
    bytes: int
    max_abs_diff: float  # over every batch checked
    diffs: dict[int, float]  # batch size -> max abs diff on that batch
    max_abs_output: float  # the largest logit of the model on those batches: the diff's scale
    atol: float
    batch_source: str  # where the checked images came from
    export_s: float  # tracing/exporting and writing the file
    check_s: float  # loading it back and comparing
    notes: list[str] = field(default_factory=list)  # worth telling the user (deprecations)


def default_export_path(run_dir: str | Path, fmt: str) -> Path:
    """``RUN/export/model.<ext>``: where ``freezetune export`` writes ``fmt`` by default."""
    return Path(run_dir) / "export" / EXPORT_FORMATS[fmt]


def sidecar_path(path: str | Path) -> Path:
    """The JSON written next to an export: its file name plus ``.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def require_onnx() -> None:
    """Raise ConfigError naming the first package of the ``onnx`` extra that is not installed."""
    for name in _ONNX_PACKAGES:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(
                [f"--format onnx needs the {name} package, not installed. HINT: pip install 'freezetune[onnx]'"]
            )


def check_batch(run: RunModel, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Up to ``n`` preprocessed images of the run's validation data, and where they came from.

    When the data cannot be loaded any more (moved or deleted), a seeded standard-normal
    batch of the same shape stands in, and the description says so: a check on random
    pixels still proves the file computes what the model computes, but it is not a check
    on the images the model was made for.
    """
    try:
        loaders = build_loaders(run.config.data, run.config.seed, len(run.classes), check_images=False)
        images = []
        for x, _ in loaders.val:
            images.append(x)
            if sum(len(i) for i in images) >= n:
                break
        batch = torch.cat(images)[:n]
        return batch, f"{len(batch)} images from the run's validation data ({run.config.data.dataset})"
    except ConfigError as exc:
        size = run.preprocessing.image_size
        batch = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
        why = "; ".join(exc.problems)
        return batch, f"{n} random images (seed {seed}), since the validation data cannot be loaded: {why}"


def _first_line(exc: BaseException) -> str:
    """The line of an exporter's error that says what failed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch.onnx colours its messages
    # torch.onnx's errors open with generic next steps; the op that failed is in the summary.
    _, summary, rest = text.partition("## Exception summary")
    lines = [ln.strip() for ln in (rest if summary else text).splitlines() if ln.strip()]
    line = re.sub(r"^<class '[\w.]+'>: ", "", lines[0]) if lines else type(exc).__name__
    return line[:300]


# --- one serialiser and one loader per format ---------------------------------------
# The serialiser returns the file's bytes for ``model``, tracing/exporting with
# ``example``; the loader reads those bytes with plain torch/onnxruntime, as the file
# would be read, and returns a function batch -> logits.

Runner = Callable[[torch.Tensor], torch.Tensor]


def _to_bytes(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def _write_torchscript(model: nn.Module, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
        # check_trace=False: torch's own check reruns the model on the same batch; ours
        # (in export_model) runs the saved file on several batch sizes instead.
        traced = torch.jit.trace(model, example, check_trace=False)
        return _to_bytes(lambda f: torch.jit.save(traced, f))


def _load_torchscript(data: bytes) -> Runner:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def _batch_dim() -> Any:
    # min=1: a batch of one must work. The example batch has 2 or more rows, since
    # torch.export specializes a dimension whose example size is 0 or 1.
    return torch.export.Dim("batch", min=1)


def _write_exported_program(model: nn.Module, example: torch.Tensor) -> bytes:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    return _to_bytes(lambda f: torch.export.save(program, f))


def _load_exported_program(data: bytes) -> Runner:
    return torch.export.load(io.BytesIO(data)).module()


def _write_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes=({0: _batch_dim()},),
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT],
        verbose=False,  # else the exporter prints four progress lines per step
    )
    assert program is not None  # dynamo=True without f returns the program
    # One self-contained file (the weights inside, not in an external .data file referenced by
    # its name), serialised as ONNXProgram.save does for a model under protobuf's 2 GB.
    return program.model_proto.SerializeToString()


def _load_onnx(data: bytes) -> Runner:
    import onnxruntime  # the onnx extra; require_onnx() checked it is there

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0])

    return run


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


_WRITERS = {"torchscript": _write_torchscript, "exported_program": _write_exported_program, "onnx": _write_onnx}
_LOADERS = {"torchscript": _load_torchscript, "exported_program": _load_exported_program, "onnx": _load_onnx}


def _check_sizes(n: int) -> list[int]:
    """The batch sizes to run: the real batch, a batch of one, and a larger one (the batch
    dimension is dynamic, so sizes never seen at export time must work too)."""
    return sorted({n, 1, n + 3})


def _resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` rows taken cyclically from ``batch``: real images for every batch size."""
    return batch[torch.arange(size) % len(batch)]


@torch.no_grad()
def _compare(model: nn.Module, run: Runner, batch: torch.Tensor) -> tuple[dict[int, float], float]:
    """Max abs difference between ``model`` and ``run`` on each of :func:`_check_sizes`,
    and the largest output of ``model`` (a difference means little without its scale)."""
    diffs, scale = {}, 0.0
    for size in _check_sizes(len(batch)):
        x = _resize(batch, size).contiguous()
        expected, got = model(x), run(x)
        scale = max(scale, expected.abs().max().item())
        if got.shape != expected.shape:
            diffs[size] = math.inf
        else:
            diff = (got.float() - expected.float()).abs().max().item()
            diffs[size] = diff if math.isfinite(diff) else math.inf  # NaN compares as a mismatch
    return diffs, scale


def _sidecar(run: RunModel, fmt: str, path: Path, result: dict[str, Any]) -> dict[str, Any]:
    size = run.preprocessing.image_size
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return {
        "format": SIDECAR_FORMAT,
        "export_format": fmt,
        "file": path.name,
        "classes": run.classes,  # the output columns, in order
        "preprocessing": run.preprocessing.to_json(),
        "input_shape": ["N", 3, size, size],  # N: the batch, any size >= 1
        "input_dtype": "float32",
        "output": "logits [N, len(classes)]; softmax gives probabilities",
        **({"input_name": ONNX_INPUT, "output_name": ONNX_OUTPUT} if fmt == "onnx" else {}),
        "arch": run.config.model.arch,
        "checkpoint": str(run.path),
        # Which weights these are, even after a later `train --overwrite` of the run.
        "checkpoint_sha256": _sha256(run.path),
        "epoch": run.epoch,
        **versions,
        "check": result,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_model(
    run: RunModel,
    fmt: str,
    batch: torch.Tensor,
    out_path: str | Path,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
    batch_source: str = "the given batch",
) -> ExportResult:
    """Write ``run``'s model as ``fmt`` to ``out_path`` with its sidecar, checked first.

    Args:
        run: a finished run's model (:func:`freezetune.infer.load_run`).
        fmt: one of :data:`EXPORT_FORMATS`.
        batch: preprocessed images ``[N, 3, H, W]`` to check the file on (:func:`check_batch`).
        out_path: the artifact; the sidecar goes next to it (:func:`sidecar_path`).
        atol: the largest max abs difference from the eager model that passes.
        overwrite: replace an existing file at ``out_path`` (and its sidecar).
        batch_source: where ``batch`` came from, for the sidecar.

    Raises:
        ConfigError: an unknown format, a missing onnx package, an existing file without
            ``overwrite``, or an output path that is a folder. Nothing is written.
        ExportFailed: the exporter cannot express the model, or the file it wrote fails to
            load or run. Nothing is written.
        ExportMismatch: the saved file's outputs differ by more than ``atol``. Nothing is written.
        CannotWrite: the folder cannot be written (checked before exporting). Nothing is written.
        WriteFailed: the files do not fit on its disk (checked before writing), or the disk
            fails. Nothing is written.
    """
    path = Path(out_path).expanduser()
    sidecar = sidecar_path(path)
    _check_request(fmt, path, sidecar, overwrite, batch)
    model = run.model.eval()
    # A model with adapters (freeze.adapters) is written merged, one weight per layer and no peft
    # code in the file, and checked against the model as trained, adapters and all.
    written = merged_copy(model).eval() if has_adapters(model) else model
    start = time.perf_counter()
    data = _write(run, fmt, written, batch)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    diffs, scale = _check_file(fmt, model, data, batch, atol)
    check_s = time.perf_counter() - start
    check = {
        "max_abs_diff": max(diffs.values()),
        "atol": atol,
        "max_abs_output": scale,
        "batch_sizes": {str(n): d for n, d in diffs.items()},
        "batch": batch_source,
    }
    side = (json.dumps(_sidecar(run, fmt, path, check), indent=2) + "\n").encode()
    # The artifact renamed first: a crash between the two renames leaves a new file whose
    # sidecar is missing or old, never a sidecar describing a file that is not there.
    start = time.perf_counter()
    write_files({path: data, sidecar: side}, make_folders=True)
    export_s += time.perf_counter() - start
    return ExportResult(
        format=fmt,
        path=path,
        sidecar=sidecar,
        bytes=len(data),
        max_abs_diff=check["max_abs_diff"],
        diffs=diffs,
        max_abs_output=scale,
        atol=atol,
        batch_source=batch_source,
        export_s=export_s,
        check_s=check_s,
        notes=_notes(fmt),
    )


def _check_request(fmt: str, path: Path, sidecar: Path, overwrite: bool, batch: torch.Tensor) -> None:
    """Refuse, before anything is written, what :func:`export_model` cannot do (see its Raises)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError([f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}"])
    if fmt == "onnx":
        require_onnx()
    for p in (path, sidecar):
        if p.is_dir():
            raise ConfigError([f"--out: {p} is a folder. HINT: give a file path, e.g. {p / EXPORT_FORMATS[fmt]}"])
    # Before the minutes an export may take: a folder that cannot be written is refused now.
    check_writable(path.parent)
    if fmt == "exported_program" and path.suffix != ".pt2":
        raise ConfigError(
            [f"--out: {path}: torch.export.load expects a file ending in .pt2. HINT: --out {path.with_suffix('.pt2')}"]
        )
    existing = [str(p) for p in (path, sidecar) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            [
                f"--out: {' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}. "
                "HINT: pass --overwrite to replace it, or --out PATH"
            ]
        )
    if batch.ndim != 4 or len(batch) == 0:
        raise ValueError(f"batch: expected [N, 3, H, W] with N >= 1, got {list(batch.shape)}")


def _write(run: RunModel, fmt: str, model: nn.Module, batch: torch.Tensor) -> bytes:
    """``model`` exported as ``fmt``, the file's bytes; the exporter's error becomes :class:`ExportFailed`."""
    if fmt == "onnx" and _weight_bytes(model) >= _ONNX_MAX_BYTES:
        raise ExportFailed(
            f"--format onnx: {run.config.model.arch}'s weights take {_weight_bytes(model) / 2**30:.1f} GiB, and one "
            "ONNX file holds at most 2 GiB. HINT: --format exported_program"
        )
    # Two or more rows: torch.export would fix a batch of one as a constant.
    example = _resize(batch, max(2, len(batch))).contiguous()
    try:
        return _WRITERS[fmt](model, example)
    except (OSError, MemoryError):
        raise  # the machine's fault, not the model's: no advice to try another format
    except Exception as exc:
        raise ExportFailed(
            f"--format {fmt}: torch cannot export {run.config.model.arch}: {_first_line(exc)}. "
            f"HINT: try --format {'exported_program' if fmt != 'exported_program' else 'torchscript'}, "
            "or --debug for the traceback"
        ) from exc


def _check_file(
    fmt: str, model: nn.Module, data: bytes, batch: torch.Tensor, atol: float
) -> tuple[dict[int, float], float]:
    """Load the file's ``data`` back as ``fmt`` and compare it with ``model`` (:func:`_compare`): raise
    :class:`ExportFailed` when it does not load or run, :class:`ExportMismatch` beyond ``atol``."""
    try:
        diffs, scale = _compare(model, _LOADERS[fmt](data), batch)
    except (OSError, MemoryError):
        raise
    except Exception as exc:
        raise ExportFailed(
            f"--format {fmt}: the written file fails when loaded back and run: {_first_line(exc)}. "
            "HINT: try another --format, or --debug for the traceback"
        ) from exc
    worst = max(diffs.values())
    if not worst <= atol:
        detail = ", ".join(f"batch of {n}: {d:.3g}" for n, d in diffs.items())
        raise ExportMismatch(
            f"--format {fmt}: the exported model's outputs differ from the model's by {worst:.3g} "
            f"(max abs; --atol {atol:g}; {detail}); nothing written. "
            "HINT: try another --format, or --atol if this difference is acceptable"
        )
    return diffs, scale


def _notes(fmt: str) -> list[str]:
    """What is worth telling the user about an export in ``fmt`` (deprecations)."""
    if fmt == "torchscript":
        return [
            f"torch {torch.__version__.split('+')[0]} deprecates TorchScript (torch.jit); "
            "--format exported_program is its successor"
        ]
    return []


def load_snippet(result: ExportResult) -> str:
    """Three lines of plain PyTorch (or onnxruntime) that load and run the exported file."""
    path = str(result.path)
    if result.format == "onnx":
        lines = [
            "import onnxruntime",
            f'session = onnxruntime.InferenceSession("{path}", providers=["CPUExecutionProvider"])',
            f'logits = session.run(["{ONNX_OUTPUT}"], {{"{ONNX_INPUT}": images.numpy()}})[0]',
        ]
    else:
        load = "torch.jit.load" if result.format == "torchscript" else "torch.export.load"
        module = "" if result.format == "torchscript" else ".module()"
        lines = ["import torch", f'model = {load}("{path}"){module}', "logits = model(images)"]
    return "\n".join(lines)
