"""One check of a config against its model and its data (freezetune.checks): every problem
of the config, the model and the data in one error, then the config resolved once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from freezetune import checks
from freezetune.checks import check, check_dict
from freezetune.config import ConfigError, from_dict


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tree: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check_dict(tree)
    return info.value.problems


def one_problem_per_key(problems: list[str], keys: list[str]) -> dict[str, str]:
    """Map each dotted key to the one problem line that starts with it."""
    found = {}
    for key in keys:
        lines = [p for p in problems if p.startswith(f"{key}:")]
        assert len(lines) == 1, f"expected one problem for {key}, got {lines} in {problems}"
        found[key] = lines[0]
    return found


def test_semantic_problems_all_reported_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        """\
        name: ""
        model:
          arch: resnet81
          num_classes: 2
        data:
          classes: [1, 1, 2]
        freeze:
          preset: linear-probe
          rules:
            - freez: layer1
            - freeze: layer1
              unfreeze: fc
            - freeze: ""
        """,
    )
    with pytest.raises(ConfigError) as info:
        checks.load(path)
    problems = info.value.problems
    assert len(problems) == 8
    by_key = one_problem_per_key(
        problems,
        [
            "name",
            "model.arch",
            "data.classes",
            "model.num_classes",
            "freeze.rules[0]",
            "freeze.rules[1]",
            "freeze.rules[2].freeze",
            "freeze.preset",
        ],
    )
    assert "non-empty" in by_key["name"]
    assert "'resnet81'" in by_key["model.arch"] and "resnet18" in by_key["model.arch"]
    assert "duplicates" in by_key["data.classes"]
    assert "2 is fewer than the 3 classes" in by_key["model.num_classes"]
    assert "unknown rule kind 'freez'" in by_key["freeze.rules[0]"]
    assert "did you mean 'freeze'" in by_key["freeze.rules[0]"]
    assert "exactly one key" in by_key["freeze.rules[1]"]
    assert "non-empty" in by_key["freeze.rules[2].freeze"]
    assert "'linear-probe'" in by_key["freeze.preset"]
    assert "did you mean 'linear_probe'" in by_key["freeze.preset"]


def test_bad_weights_enum_name_lists_valid_names() -> None:
    problems = problems_of({"name": "exp", "model": {"arch": "resnet18", "weights": "IMAGENET_V9"}})
    assert problems == ["model.weights: 'IMAGENET_V9' is not a weights name of resnet18; valid: DEFAULT, IMAGENET1K_V1"]


@pytest.mark.parametrize("weights", ["DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "ckpt/model.pt"])
def test_valid_weights_values_accepted(weights: str) -> None:
    assert check_dict({"name": "exp", "model": {"weights": weights}}).cfg.model.weights == weights


def test_type_and_semantic_problems_reported_together() -> None:
    problems = problems_of(
        {
            "name": "exp",
            "trian": {},  # type-level: unknown key
            "model": {"arch": "resnet81"},  # semantic: unknown arch
            "freeze": {"preset": "linear-probe"},  # semantic: bad preset
        }
    )
    assert len(problems) == 3
    one_problem_per_key(problems, ["trian", "model.arch", "freeze.preset"])


@pytest.mark.parametrize(
    "classes, dataset, expected",
    [
        ([3, 10], "fashion_mnist", "data.classes: [3, 10]: Fashion-MNIST has classes 0..9"),
        (["cat", "dog"], "fake", "data.classes: ['cat', 'dog']: fake data has no class names; give indices"),
        (["sneaker", "Sandle"], "fashion_mnist", "data.classes: ['Sandle'] not among Fashion-MNIST's classes (T-shirt"),
    ],
)
def test_classes_the_dataset_does_not_have(classes: list, dataset: str, expected: str) -> None:
    tree = {"name": "exp", "data": {"classes": classes, "dataset": dataset}}
    from_dict(tree)  # the config alone: the dataset's classes are freezetune.data's to know
    (problem,) = problems_of(tree)
    assert problem.startswith(expected), problem


def test_imagefolder_class_names_are_checked_against_its_folders(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
    data = {"dataset": "imagefolder", "root": str(tmp_path / "imgs"), "classes": ["cat", "Dog"]}
    tree = {"name": "exp", "data": data}
    assert problems_of(tree) == [
        f"data.classes: ['Dog'] not among the class folders of {tmp_path / 'imgs'}/train (case matters: 'Dog' is "
        "'dog'); it has 2: cat, dog"
    ]
    data["classes"] = ["cat", "dog"]
    assert check_dict(tree).cfg.data.classes == ["cat", "dog"]


def test_check_of_a_config_in_memory_runs_its_own_checks_too() -> None:
    cfg = from_dict({"name": "exp"})
    cfg.name = ""  # changed after loading: check() looks again
    with pytest.raises(ConfigError) as info:
        check(cfg, source="mine.yaml")
    assert info.value.problems == ["name: missing: every run needs a non-empty name (its folder is runs/<name>)"]
    assert str(info.value).startswith("mine.yaml: name: missing")


def test_model_and_data_problems_from_an_edit_say_so(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: exp\n")
    with pytest.raises(ConfigError) as info:
        checks.load(path, ["model.weights=IMAGENET_V9", "data.dataset=imagefolder", f"data.root={tmp_path / 'no'}"])
    assert info.value.source == str(path)
    assert info.value.problems == [
        "model.weights: 'IMAGENET_V9' is not a weights name of resnet18; valid: DEFAULT, IMAGENET1K_V1 "
        "(set on the command line)",
        f"data.root: imagefolder needs the folders {tmp_path / 'no' / 'train'}, {tmp_path / 'no' / 'val'} "
        "(set on the command line)",
    ]


def test_load_returns_the_config_resolved(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: exp\nmodel: {weights: DEFAULT}\n")
    cfg, sources = checks.load(path, ["data.image_size=160"])
    assert (cfg.data.image_size, cfg.data.resize_size) == (160, 183)
    assert sources["image_size"].kind == "config" and sources["mean"].kind == "weights"
