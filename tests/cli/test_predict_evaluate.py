"""``freezetune predict`` and ``freezetune evaluate`` on a tiny resnet18 run trained here on
a folder of PNGs: the files they write, that their numbers agree with the model and with
each other, and every mistake as one ``error:`` line, exit 2 and no file written."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import freezetune.config
import freezetune.train
from freezetune.cli.main import main
from freezetune.data import load_image
from freezetune.infer import load_run

CLASSES = ["cat", "dog", "owl"]


def png(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = {"RGB": (32, 32, 3), "RGBA": (32, 32, 4), "L": (32, 32)}[mode]
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-epoch run on images/{train,val}/{cat,dog,owl}/*.png (4 and 3 images a class)."""
    tmp = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 3)):
        for name in CLASSES:
            for i in range(n):
                png(tmp / "images" / split / name / f"{i}.png", rng)
    cfg = freezetune.config.from_dict(
        {
            "name": "t",
            "model": {"arch": "freezetune_testnets:resnet18_narrow"},
            "data": {"dataset": "imagefolder", "root": str(tmp / "images"), "image_size": 32, "batch_size": 8},
            "train": {"epochs": 1, "output_dir": str(tmp / "run"), "device": "cpu"},
        }
    )
    freezetune.train.run(cfg)
    return {"run": tmp / "run", "images": tmp / "images"}


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """new/ with an RGB PNG, a JPEG, a greyscale and an RGBA PNG, a truncated PNG and a text file."""
    rng = np.random.default_rng(1)
    png(tmp_path / "new" / "rgb.png", rng)
    png(tmp_path / "new" / "grey.png", rng, "L")
    png(tmp_path / "new" / "alpha.png", rng, "RGBA")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "new" / "photo.jpg")
    whole = (tmp_path / "new" / "rgb.png").read_bytes()
    (tmp_path / "new" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "new" / "notes.txt").write_text("not an image, and not read: .txt")
    return tmp_path / "new"


def command(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one ``error:`` line and the problems under it; never a traceback."""
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    assert [line.startswith("error:") for line in lines].count(True) == 1 and lines[0].startswith("error:"), err
    assert all(line.startswith("  - ") for line in lines[1:]), err
    return "\n".join(lines)


def files(root: Path) -> dict[str, str]:
    """Every file under ``root``: a digest of its bytes (of its size and time for the 45 MB weights)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        if p.stat().st_size < 2**20
        else f"{p.stat().st_size} {p.stat().st_mtime_ns}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- predict


def test_predict_writes_every_file_and_lists_the_unreadable_one(
    trained: dict[str, Path], inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = command(capsys, "predict", "--run", trained["run"], inputs, "--out", tmp_path / "p", "--top-k", "9")
    assert rc == 0, err
    good = ["alpha.png", "grey.png", "photo.jpg", "rgb.png"]
    assert [line.split()[0] for line in out.splitlines()[3:7]] == [str(inputs / n) for n in good]
    assert err.startswith(f"warning: {inputs / 'cut.png'}: cannot be read as an image (OSError: image file is trunc")
    assert err.endswith("; skipped\n") and err.count("\n") == 1

    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[0] == [
        "path",
        "class_1",
        "probability_1",
        "class_2",
        "probability_2",
        "class_3",
        "probability_3",
        "error",
    ]
    assert [r[0] for r in rows[1:]] == [str(inputs / n) for n in ["alpha.png", "cut.png", *good[1:]]]
    cut = rows[2]
    assert cut[1:7] == [""] * 6 and cut[7].startswith("OSError: image file is truncated")
    assert all(r[7] == "" and sorted(r[1:7:2]) == CLASSES for r in rows[1:] if r is not cut)

    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["classes"] == CLASSES and doc["top_k"] == 3 and doc["images"] == 5 and doc["unreadable"] == 1
    assert doc["checkpoint"] == str(trained["run"] / "best.pt")
    by_path = {p["path"]: p for p in doc["predictions"]}
    assert by_path[str(inputs / "cut.png")]["classes"] == [] and by_path[str(inputs / "cut.png")]["error"]
    # Each readable file: the model's own softmax on the same preprocessed tensor, top class first.
    run = load_run(trained["run"])
    x = torch.stack([run.transform()(load_image(str(inputs / n))) for n in good])
    expected = torch.softmax(run.model(x), dim=1)
    for name, probs in zip(good, expected):
        p = by_path[str(inputs / name)]
        assert p["error"] is None and sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-6)
        got = torch.tensor([p["probabilities"][p["classes"].index(c)] for c in CLASSES], dtype=torch.float32)
        assert torch.equal(got, probs)
        assert p["probabilities"] == sorted(p["probabilities"], reverse=True)


def test_predict_writes_into_the_run_by_default_and_overwrites_only_when_told(
    trained: dict[str, Path], inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hard links: the run's weights are read, never written (outputs are new files put in place).
    run = shutil.copytree(trained["run"], tmp_path / "run", copy_function=os.link)
    rc, _, _ = command(capsys, "predict", "--run", run, inputs / "rgb.png", "--top-k", "1")
    assert rc == 0
    assert (run / "predictions.csv").read_text().splitlines()[0] == "path,class_1,probability_1,error"
    before = files(run)
    rc, _, err = command(capsys, "predict", "--run", run, inputs / "grey.png")
    assert rc == 2
    assert (
        "predictions.csv and " in error_line(err)
        and "exist already (the default output: an earlier run of this command wrote it). HINT: --overwrite" in err
    )
    assert files(run) == before
    rc, _, _ = command(capsys, "predict", "--run", run, inputs / "grey.png", "--overwrite")
    assert rc == 0
    assert json.loads((run / "predictions.json").read_text())["predictions"][0]["path"] == str(inputs / "grey.png")


def test_out_may_be_a_folder_or_end_in_an_extension(
    trained: dict[str, Path], inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results").mkdir()
    assert (
        command(capsys, "predict", "--run", trained["run"], inputs / "rgb.png", "--out", tmp_path / "results")[0] == 0
    )
    rc = command(capsys, "predict", "--run", trained["run"], inputs / "rgb.png", "--out", tmp_path / "a" / "b.CSV")[0]
    assert rc == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*") if "new" not in p.parts) == [
        "a/b.csv",
        "a/b.json",
        "results/predictions.csv",
        "results/predictions.json",
    ]


PREDICT_MISTAKES = [
    # (name, arguments after --run RUN, or with {run} replaced, the words of the error)
    ("missing path", ["{tmp}/nope.png"], "{tmp}/nope.png: no such file or folder"),
    ("folder of no images", ["{tmp}/empty"], "a folder with no image files (read: .jpg, .jpeg, .png,"),
    ("no inputs", [], "no images given"),
    ("only unreadable", ["{tmp}/new/cut.png"], "could not be read as an image (OSError: image file is truncated"),
    ("top-k 0", ["{tmp}/new/rgb.png", "--top-k", "0"], "--top-k 0: give 1 or more"),
    ("missing run", ["{tmp}/new/rgb.png", "--run", "{tmp}/runs/nope"], "--run: {tmp}/runs/nope: no such run folder"),
    ("unfinished run", ["{tmp}/new/rgb.png", "--run", "{tmp}/half"], "is not finished (it has a checkpoint.pt"),
    (
        "run given as its file",
        ["{tmp}/new/rgb.png", "--run", "{tmp}/half/best.pt"],
        "--run: {tmp}/half/best.pt is a file, not a run folder. HINT: --run {tmp}/half --checkpoint best",
    ),
    ("unknown checkpoint", ["{tmp}/new/rgb.png", "--checkpoint", "final"], "'final' is not one of best, last"),
    ("out inside a file", ["{tmp}/new/rgb.png", "--out", "{tmp}/new/rgb.png/p"], "is a file, not a folder"),
]


@pytest.mark.parametrize(("args", "words"), [m[1:] for m in PREDICT_MISTAKES], ids=[m[0] for m in PREDICT_MISTAKES])
def test_a_predict_mistake_is_one_error_exit_2_and_writes_nothing(
    trained: dict[str, Path],
    inputs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    words: str,
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "half" / "best.pt").write_bytes(b"")
    before, run_before = files(tmp_path), files(trained["run"])
    rc, out, err = command(capsys, "predict", "--run", trained["run"], *(a.format(tmp=tmp_path) for a in args))
    assert rc == 2 and out == ""
    assert words.format(tmp=tmp_path) in error_line(err)
    assert files(tmp_path) == before and files(trained["run"]) == run_before


# --------------------------------------------------------------------------- evaluate


def test_evaluate_on_a_folder_agrees_with_predict_and_skips_the_unreadable(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = shutil.copytree(trained["images"] / "val", tmp_path / "val")
    shutil.rmtree(data / "owl")  # the folder may hold fewer classes than the model
    (data / "dog" / "bad.png").write_text("not an image")
    rc, out, err = command(capsys, "evaluate", "--run", trained["run"], "--data", data, "--out", tmp_path / "ev")
    assert rc == 0, err
    assert err == f"warning: {data / 'dog' / 'bad.png'}: cannot be read as an image " + (
        "(UnidentifiedImageError: not an image format PIL can read); skipped\n"
    )
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["skipped"] == [
        {"path": str(data / "dog" / "bad.png"), "reason": "UnidentifiedImageError: not an image format PIL can read"}
    ]
    assert (tmp_path / "ev.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"accuracy: {report['accuracy']:.4f} ({report['correct']} of 6 images)" in out

    rc, _, _ = command(capsys, "predict", "--run", trained["run"], data, "--out", tmp_path / "p", "--top-k", "1")
    assert rc == 0
    predicted = json.loads((tmp_path / "p.json").read_text())["predictions"]
    top1 = [(Path(p["path"]).parent.name, p["classes"][0]) for p in predicted if not p["error"]]
    assert report["samples"] == len(top1) == 6
    assert report["correct"] == sum(t == p for t, p in top1)
    names = report["confusion"]["classes"]
    counts = {(t, p): top1.count((t, p)) for t in names for p in names}
    assert report["confusion"]["matrix"] == [[counts[t, p] for p in names] for t in names]
    assert {r["class"] for r in report["per_class"]} == set(names)
    assert {r["class"]: r["support"] for r in report["per_class"]}.get("owl", 0) == 0


def test_evaluate_without_data_is_the_runs_validation_split(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = command(capsys, "evaluate", "--run", trained["run"], "--out", tmp_path / "own")
    assert rc == 0
    assert "data: the run's validation split (imagefolder, " in out
    rc, _, _ = command(
        capsys, "evaluate", "--run", trained["run"], "--data", trained["images"] / "val", "--out", tmp_path / "dir"
    )
    assert rc == 0
    own, folder = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("own", "dir"))
    assert own["samples"] == 9 and own["skipped"] == []
    for key in ("accuracy", "per_class", "macro", "confusion"):
        assert own[key] == folder[key], key


def test_evaluate_leaves_out_classes_it_was_not_trained_on_and_refuses_existing_outputs(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = shutil.copytree(trained["images"] / "val", tmp_path / "val")
    png(data / "bird" / "0.png", np.random.default_rng(2))  # a class of the folder the model does not know
    rc, out, err = command(capsys, "evaluate", "--run", trained["run"], "--data", data, "--out", tmp_path / "one")
    assert rc == 0 and "note: --data: left out 1 class folder(s) the model was not trained on: bird" in err
    report = json.loads((tmp_path / "one.json").read_text())
    assert report["classes_left_out"] == ["bird"] and report["samples"] == 9  # cat, dog, owl: 3 each

    shutil.rmtree(data / "cat")
    shutil.rmtree(data / "dog")
    shutil.rmtree(data / "owl")
    before = files(tmp_path)
    rc, out, err = command(capsys, "evaluate", "--run", trained["run"], "--data", data, "--out", tmp_path / "ev")
    assert rc == 2 and out == ""  # nothing in it the model knows
    assert "class folder(s) bird of" in error_line(err) and "which has 3: cat, dog, owl" in err
    assert files(tmp_path) == before

    data = shutil.copytree(trained["images"] / "val", tmp_path / "val2")
    (tmp_path / "ev.png").write_bytes(b"mine")
    before = files(tmp_path)
    rc, _, err = command(capsys, "evaluate", "--run", trained["run"], "--data", data, "--out", tmp_path / "ev")
    assert rc == 2 and f"--out: {tmp_path / 'ev.png'} exists already" in error_line(err)
    assert files(tmp_path) == before


def test_evaluate_without_matplotlib_writes_the_json_and_says_why_no_png(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ModuleNotFoundError
    rc, out, _ = command(capsys, "evaluate", "--run", trained["run"], "--out", tmp_path / "ev")
    assert rc == 0
    assert f"note: matplotlib is not installed, so no {tmp_path / 'ev.png'}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.json"]


def test_a_run_with_a_relative_data_root_is_evaluated_from_another_folder(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(trained["images"], tmp_path / "project" / "images")
    monkeypatch.chdir(tmp_path / "project")
    cfg = freezetune.config.from_dict(
        {
            "name": "rel",
            "data": {"dataset": "imagefolder", "root": "images", "image_size": 32, "batch_size": 8},
            "freeze": {"preset": "linear_probe"},
            "train": {"epochs": 1, "device": "cpu"},
        }
    )
    freezetune.train.run(cfg)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where images/ means nothing
    rc, out, err = command(capsys, "evaluate", "--run", "../project/runs/rel")
    assert rc == 0, err
    assert f"data: the run's validation split (imagefolder, {tmp_path / 'project' / 'images'})" in out


# --------------------------------------------------------------------------- best.pt without its frozen tensors


def test_a_run_loads_into_an_architecture_built_without_initialising_it(
    trained: dict[str, Path], run_builds: list[str]
) -> None:
    # Every weight is replaced by the file's: the architecture is built on the meta device (vit_b_16's
    # random init took 1-2 s of every predict), and the loaded model is exactly the saved one.
    state = load_run(trained["run"], "last").model.state_dict()
    assert run_builds == ["meta"]
    saved = torch.load(trained["run"] / "model.pt", weights_only=True)["model"]
    assert list(state) == list(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert all(t.device.type == "cpu" for t in state.values())


@pytest.fixture(scope="module")
def probed(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch linear probe on the same images: best.pt (epoch 1) and model.pt (epoch 1, a full
    save) hold the same weights, best.pt without the frozen ones (freezetune.record.shared)."""
    out = tmp_path_factory.mktemp("probed") / "run"
    cfg = freezetune.config.from_dict(
        {
            "name": "probe",
            "model": {"arch": "freezetune_testnets:resnet18_narrow"},
            "data": {"dataset": "imagefolder", "root": str(trained["images"]), "image_size": 32, "batch_size": 8},
            "freeze": {"preset": "linear_probe"},
            "train": {"epochs": 1, "output_dir": str(out), "device": "cpu"},
        }
    )
    freezetune.train.run(cfg)
    return out


def test_a_best_pt_without_frozen_tensors_predicts_and_evaluates_as_the_full_save(
    trained: dict[str, Path], probed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slim = torch.load(probed / "best.pt", weights_only=True)["shared"]["tensors"]
    assert sorted(slim) == ["fc.bias", "fc.weight"]  # the probe's head: all best.pt holds of the weights
    assert not (probed / "frozen.pt").exists()  # model.pt holds the frozen tensors now
    best, last = load_run(probed, "best").model.state_dict(), load_run(probed, "last").model.state_dict()
    assert list(best) == list(last) and all(torch.equal(best[k], last[k]) for k in best)
    outputs = {}
    for which in ("best", "last"):
        rc, _, err = command(
            capsys,
            "predict",
            "--run",
            probed,
            trained["images"] / "val",
            "--checkpoint",
            which,
            "--out",
            tmp_path / which,
        )
        assert rc == 0, err
        rc, out, err = command(
            capsys, "evaluate", "--run", probed, "--checkpoint", which, "--out", tmp_path / f"ev_{which}"
        )
        assert rc == 0, err
        predicted = json.loads((tmp_path / f"{which}.json").read_text())
        report = json.loads((tmp_path / f"ev_{which}.json").read_text())
        outputs[which] = (predicted["predictions"], {k: v for k, v in report.items() if k != "checkpoint"})
    assert outputs["best"] == outputs["last"]


def test_a_best_pt_whose_frozen_tensors_are_gone_or_another_runs_is_one_error_exit_2(
    trained: dict[str, Path], probed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(probed / "best.pt", alone / "best.pt")  # copied without its run folder
    rc, out, err = command(capsys, "plan", "--config", probed / "config.yaml", f"model.weights={alone / 'best.pt'}")
    assert rc == 2 and out == ""
    assert error_line(err).startswith(
        f"error: model.weights: {alone / 'best.pt'} holds only the tensors its run could change: the "
    )
    assert f"neither is in {alone}. HINT: put the run's frozen.pt or model.pt back beside best.pt" in err

    mixed = shutil.copytree(probed, tmp_path / "mixed")
    shutil.copy(trained["run"] / "model.pt", mixed / "model.pt")  # another run's (resnet18, 3 classes too)
    before = files(mixed)
    rc, out, err = command(capsys, "predict", "--run", mixed, trained["images"] / "val", "--out", tmp_path / "p")
    assert rc == 2 and out == ""
    assert error_line(err).startswith(f"error: --run: {mixed / 'best.pt'} holds only the tensors its run could change")
    assert f"but {mixed / 'model.pt'} does not hold the ones best.pt was saved with (hash " in err
    assert files(mixed) == before and not list(tmp_path.glob("p.*"))
    rc, _, err = command(capsys, "predict", "--run", mixed, trained["images"] / "val", "--checkpoint", "last")
    assert rc == 0, err  # model.pt itself is complete, whichever run it is from
