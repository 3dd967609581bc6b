"""Prediction batching and input discovery, on a tiny hand-built model (no training):
which files are read, that every readable file gets the model's own softmax output,
and that an unreadable one is listed with its reason instead of failing its batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision import datasets

from freezetune.config import ConfigError, Preprocessing, from_dict
from freezetune.data import load_image
from freezetune.infer import (
    RunModel,
    find_images,
    labelled_images,
    predict_dataset,
    predict_files,
    top_k,
)

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def run() -> RunModel:
    """A RunModel around a seeded linear classifier of 8x8 images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, len(CLASSES))).eval().requires_grad_(False)
    pre = Preprocessing(8, 8, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "none")
    return RunModel(model, CLASSES, pre, from_dict({"name": "t"}), 1, Path("best.pt"), Path("."))


def write_images(folder: Path) -> dict[str, Path]:
    """One file of each kind predict meets: RGB PNG, JPEG, greyscale, RGBA, 16-bit greyscale,
    a truncated PNG and a text file named .png."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "rgb": ("rgb.png", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)),
        "jpeg": ("photo.jpg", rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)),
        "grey": ("grey.png", rng.integers(0, 256, (8, 8), dtype=np.uint8)),
        "rgba": ("alpha.png", rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)),
        "wide": ("wide.png", rng.integers(0, 65536, (8, 8), dtype=np.uint16)),
    }
    paths = {}
    for key, (name, pixels) in files.items():
        Image.fromarray(pixels).save(folder / name)
        paths[key] = folder / name
    whole = paths["rgb"].read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    (folder / "text.png").write_text("not an image")
    return {**paths, "truncated": folder / "cut.png", "text": folder / "text.png"}


def test_folders_are_searched_recursively_for_image_extensions_only(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/z.png", "a/deep/b.JPG", "a/notes.txt", "a/m.webp", "x.dat"):
        (tmp_path / name).write_bytes(b"")
    found = find_images([tmp_path / "a", tmp_path / "x.dat", tmp_path / "a" / "z.png"])
    # sorted per folder; a file named outright is kept whatever its extension; z.png only once
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/deep/b.JPG", "a/m.webp", "a/z.png", "x.dat"]


def test_missing_paths_empty_folders_and_no_paths_are_refused_all_at_once(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image")
    with pytest.raises(ConfigError) as info:
        find_images([tmp_path / "nope.png", tmp_path / "empty"])
    assert info.value.problems == [
        f"{tmp_path / 'nope.png'}: no such file or folder",
        f"{tmp_path / 'empty'}: a folder with no image files (read: .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, "
        ".tiff, .webp)",
    ]
    with pytest.raises(ConfigError, match="no images given"):
        find_images([])


def test_every_readable_file_gets_the_models_own_softmax_and_bad_ones_their_reason(
    run: RunModel, tmp_path: Path
) -> None:
    paths = write_images(tmp_path)
    order = ["rgb", "truncated", "jpeg", "grey", "text", "rgba", "wide"]
    results = predict_files(run, [paths[k] for k in order], batch_size=64)
    assert [r.path for r in results] == [str(paths[k]) for k in order]
    errors = {k: r.error for k, r in zip(order, results)}
    assert errors["truncated"] is not None and errors["truncated"].startswith("OSError: image file is truncated")
    assert errors["text"] == "UnidentifiedImageError: not an image format PIL can read"
    good = [k for k in order if errors[k] is None]
    assert good == ["rgb", "jpeg", "grey", "rgba", "wide"]
    # The same preprocessed tensors, in one batch through the model: bitwise the same probabilities.
    x = torch.stack([run.transform()(load_image(str(paths[k]))) for k in good])
    expected = torch.softmax(run.model(x), dim=1)
    got = torch.stack([r.probs for r in results if r.probs is not None])
    assert torch.equal(got, expected)
    assert torch.allclose(got.sum(dim=1), torch.ones(len(good)))
    # Other batch boundaries change nothing but rounding.
    small = predict_files(run, [paths[k] for k in order], batch_size=2)
    assert [r.error for r in small] == [r.error for r in results]
    assert torch.allclose(torch.stack([r.probs for r in small if r.probs is not None]), expected, atol=1e-6)


def test_top_k_is_most_probable_first_and_capped_at_the_class_count() -> None:
    probs = torch.tensor([0.2, 0.5, 0.3])
    assert top_k(probs, 2, CLASSES) == [("dog", 0.5), ("owl", pytest.approx(0.3))]
    assert [c for c, _ in top_k(probs, 10, CLASSES)] == ["dog", "owl", "cat"]


def png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


def test_a_labelled_folder_is_labelled_in_the_models_order_and_may_hold_fewer_classes(tmp_path: Path) -> None:
    png(tmp_path / "owl" / "1.png")
    png(tmp_path / "owl" / "sub" / "2.png")
    png(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / ".cache").mkdir()  # hidden: not a class
    png(tmp_path / "bird" / "1.png")  # a class of the folder the model was not trained on: left out, and said so
    samples, empty, left_out = labelled_images(tmp_path, CLASSES)
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in samples] == [
        ("cat/1.png", 0),
        ("owl/1.png", 2),
        ("owl/sub/2.png", 2),
    ]
    assert empty == ["dog"] and left_out == ["bird"]


@pytest.mark.parametrize(
    ("folders", "words"),
    [
        (
            ["bird", "emu"],
            "class folder(s) bird, emu of {root} are not classes of the model, which has 3: cat, dog, owl",
        ),
        (["cat", "Dog", "emu"], "(case matters: 'Dog' is 'dog')"),
        (["Dog"], "(case matters: 'Dog' is 'dog')"),
        (["train", "val"], "HINT: point --data at one split, e.g. --data {root}/val"),
        ([], "has no class folders (expected {root}/CLASS/image.png)"),
    ],
    ids=["no known class", "case differs beside others", "case differs", "dataset root", "no class folders"],
)
def test_a_labelled_folder_the_model_cannot_score_is_one_problem(
    tmp_path: Path, folders: list[str], words: str
) -> None:
    for name in folders:
        png(tmp_path / name / "1.png")
    with pytest.raises(ConfigError) as info:
        labelled_images(tmp_path, CLASSES)
    assert len(info.value.problems) == 1
    assert words.format(root=tmp_path) in info.value.problems[0]


def test_a_labelled_folder_without_images_or_that_is_missing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no image")
    with pytest.raises(ConfigError, match="its class folders hold no image files"):
        labelled_images(tmp_path, CLASSES)
    with pytest.raises(ConfigError, match="no such folder"):
        labelled_images(tmp_path / "nope", CLASSES)


def test_a_dataset_sample_that_fails_to_load_is_skipped_with_its_file(run: RunModel, tmp_path: Path) -> None:
    png(tmp_path / "cat" / "1.png", 1)
    png(tmp_path / "owl" / "1.png", 2)
    (tmp_path / "owl" / "2.png").write_text("not an image")
    ds = datasets.ImageFolder(str(tmp_path), transform=run.transform(), loader=load_image)
    result = predict_dataset(run.model, ds, batch_size=2)
    assert result.targets.tolist() == [0, 1]  # ImageFolder's labels: cat 0, owl 1
    assert result.probs.shape == (2, 3)
    assert result.skipped == [
        {"path": str(tmp_path / "owl" / "2.png"), "reason": "UnidentifiedImageError: not an image format PIL can read"}
    ]
