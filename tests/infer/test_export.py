"""freezetune export: each format written, loaded back with plain torch/onnxruntime and
equal to the eager model within 1e-5, on resnet18 and mobilenet_v3_small (tiny runs on
fake data, 32 px); refusals and failures write nothing and say so in one error line."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

import freezetune.infer.export as export_module
from freezetune.cli.main import main
from freezetune.config import from_dict
from freezetune.infer import (
    EXPORT_FORMATS,
    ExportFailed,
    ExportMismatch,
    RunModel,
    check_batch,
    export_model,
    load_run,
)
from freezetune.train import run as train_run

SIZE = 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """``runs(arch)``: a finished 1-epoch run of ``arch``, trained once per module."""
    done: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in done:
            out = tmp_path_factory.mktemp(arch) / "run"
            cfg = {
                "name": f"export_{arch}",
                "seed": 0,
                "model": {"arch": arch, "num_classes": 3},
                "data": {"dataset": "fake", "image_size": SIZE, "batch_size": 8, "train_samples": 8, "val_samples": 8},
                "freeze": {"preset": "linear_probe"},
                "train": {"epochs": 1, "device": "cpu", "output_dir": str(out)},
            }
            train_run(from_dict(cfg))
            done[arch] = out
        return done[arch]

    return get


def _reload(fmt: str, path: Path):
    """The exported file, loaded as a user without freezetune would."""
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    if fmt == "exported_program":
        return torch.export.load(str(path)).module()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


CASES = [
    ("resnet18", "torchscript"),
    ("resnet18", "exported_program"),
    ("resnet18", "onnx"),
    ("mobilenet_v3_small", "torchscript"),
    # resnet18 takes each format's path in `make test`, mobilenet (hardswish, squeeze-excitation) one
    # of them; its torch.export and ONNX round trips (5-7 s each) run under `make test-all`.
    pytest.param("mobilenet_v3_small", "exported_program", marks=pytest.mark.heavy),
    pytest.param("mobilenet_v3_small", "onnx", marks=pytest.mark.heavy),
]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize(("arch", "fmt"), CASES)
def test_round_trip_matches_the_model(runs, tmp_path: Path, arch: str, fmt: str) -> None:
    run = load_run(runs(arch))
    batch, source = check_batch(run)
    assert source.startswith("8 images from the run's validation data")
    out = tmp_path / EXPORT_FORMATS[fmt]
    result = export_model(run, fmt, batch, out, batch_source=source)

    assert result.path == out and out.is_file() and result.bytes == out.stat().st_size
    assert sorted(result.diffs) == [1, 8, 11]
    assert result.max_abs_diff == max(result.diffs.values()) <= 1e-5
    # The untrained mobilenet's logits are below 1e-3: 1e-5 alone would allow 1% errors there.
    assert result.max_abs_diff <= 1e-5 * result.max_abs_output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.name + ".json"])

    # Our own check, independent of export_model's (a new batch size would only add
    # seconds of oneDNN set-up on a small CPU, so the real batch).
    x = batch
    with torch.no_grad():
        diff = (_reload(fmt, out)(x) - run.model(x)).abs().max().item()
    assert diff <= 1e-5

    side = json.loads((tmp_path / (out.name + ".json")).read_text())
    assert side["file"] == out.name and side["export_format"] == fmt
    assert side["classes"] == run.classes == ["0", "1", "2"]
    assert side["preprocessing"] == run.preprocessing.to_json()
    assert side["input_shape"] == ["N", 3, SIZE, SIZE]
    assert side["checkpoint"] == str(run.path) and side["epoch"] == run.epoch == 1
    assert side["torch"] == torch.__version__
    assert side["check"]["max_abs_diff"] == result.max_abs_diff
    assert side["check"]["max_abs_output"] == result.max_abs_output > 0
    assert side["check"]["batch"] == source


def test_cli_writes_the_default_path_and_refuses_to_overwrite(runs, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = runs("resnet18")
    out = run_dir / "export" / "model.torchscript.pt"
    assert main(["export", "--run", str(run_dir), "--format", "torchscript", "--checkpoint", "last"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "max abs diff 0 " in printed and "torch.jit.load" in printed
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.parent.iterdir()}
    assert sorted(before) == ["model.torchscript.pt", "model.torchscript.pt.json"]

    assert main(["export", "--run", str(run_dir), "--format", "torchscript"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("error:") == 1
    assert str(out) in captured.err and "--overwrite" in captured.err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.parent.iterdir()} == before

    assert main(["export", "--run", str(run_dir), "--format", "torchscript", "--overwrite"]) == 0
    assert json.loads((out.parent / "model.torchscript.pt.json").read_text())["checkpoint"] == str(run_dir / "best.pt")


def test_a_mismatch_writes_nothing(runs, tmp_path: Path) -> None:
    run = load_run(runs("resnet18"))
    out = tmp_path / "new" / "model.pt2"
    with pytest.raises(ExportMismatch, match=r"differ from the model's by 0 \(max abs; --atol -1"):
        export_model(run, "exported_program", check_batch(run)[0], out, atol=-1.0)
    assert list(tmp_path.iterdir()) == []  # not even the folder it made


def test_cli_mismatch_exits_1_with_one_error_line(
    runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(export_module, "_compare", lambda model, run, batch: ({1: 0.0, 8: 0.25, 11: 0.0}, 3.0))
    out = tmp_path / "m.pt"
    assert main(["export", "--run", str(runs("resnet18")), "--format", "torchscript", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(
        "error: --format torchscript: the exported model's outputs differ from the model's by 0.25"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_exporter_failure_writes_nothing(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(model: torch.nn.Module, example: torch.Tensor) -> bytes:  # the exporters serialise to memory
        raise RuntimeError("Unsupported: aten::frobnicate has no ONNX translation\nmore detail")

    monkeypatch.setitem(export_module._WRITERS, "onnx", failing)
    run = load_run(runs("resnet18"))
    with pytest.raises(ExportFailed, match=r"^--format onnx: torch cannot export resnet18: Unsupported: aten::frob"):
        export_model(run, "onnx", check_batch(run)[0], tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


class _Eigvals(torch.nn.Module):
    """An op torch.onnx cannot translate (aten.linalg_eig)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x[:, 0, :3, :3]).real


def test_an_unsupported_onnx_op_is_named_and_nothing_written(runs, tmp_path: Path) -> None:
    run = load_run(runs("resnet18"))
    unsupported = RunModel(**{**vars(run), "model": _Eigvals().eval()})
    with pytest.raises(ExportFailed) as raised:
        export_model(unsupported, "onnx", check_batch(run)[0], tmp_path / "export" / "model.onnx")
    message = str(raised.value)
    assert message.startswith("--format onnx: torch cannot export resnet18: No ONNX function found for ")
    assert "aten.linalg_eig" in message and "\n" not in message and "\x1b" not in message
    assert list(tmp_path.iterdir()) == []


def test_missing_run_folder_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--run", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("error:") == 1 and "Traceback" not in captured.err
    assert f"--run: {tmp_path / 'nope'}: no such run folder" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_package_names_the_extra(
    runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = export_module.importlib.util.find_spec
    monkeypatch.setattr(
        export_module.importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name)
    )
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(runs("resnet18")), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "onnxscript" in err and "pip install 'freezetune[onnx]'" in err
    assert list(tmp_path.iterdir()) == []


def test_moved_data_falls_back_to_a_random_batch_and_says_so(runs, tmp_path: Path) -> None:
    run = load_run(runs("resnet18"))
    data = dataclasses.replace(run.config.data, dataset="imagefolder", root=str(tmp_path / "moved"))
    moved = RunModel(**{**vars(run), "config": dataclasses.replace(run.config, data=data)})
    batch, source = check_batch(moved)
    assert batch.shape == (8, 3, SIZE, SIZE)
    assert source.startswith("8 random images (seed 0), since the validation data cannot be loaded: data.root:")
    assert str(tmp_path / "moved") in source and "\n" not in source
    assert torch.equal(batch, check_batch(moved)[0])  # seeded
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_a_best_pt_without_frozen_tensors_exports_as_the_full_save(runs, tmp_path: Path) -> None:
    run_dir = runs("resnet18")  # a linear probe: best.pt holds the head, model.pt (the same epoch) everything
    assert sorted(torch.load(run_dir / "best.pt", weights_only=True)["shared"]["tensors"]) == ["fc.bias", "fc.weight"]
    exported = {}
    for which in ("best", "last"):
        run = load_run(run_dir, which)
        export_model(run, "torchscript", check_batch(run)[0], tmp_path / f"{which}.pt")
        exported[which] = torch.jit.load(str(tmp_path / f"{which}.pt")).state_dict()
    best, last = exported["best"], exported["last"]
    assert list(best) == list(last) and all(torch.equal(best[k], last[k]) for k in best)
