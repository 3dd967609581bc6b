"""Config loading: YAML files, ``extends:`` inheritance, overrides and strict validation."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from freezetune.config import (
    Config,
    ConfigError,
    EventSpec,
    GroupRule,
    Rule,
    apply_overrides,
    from_dict,
    load_config,
    load_yaml_tree,
    mark_edited,
    read_config,
    to_dict,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tree: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_dict(tree)
    return info.value.problems


def one_problem_per_key(problems: list[str], keys: list[str]) -> dict[str, str]:
    """Map each dotted key to the one problem line that starts with it."""
    found = {}
    for key in keys:
        lines = [p for p in problems if p.startswith(f"{key}:")]
        assert len(lines) == 1, f"expected one problem for {key}, got {lines} in {problems}"
        found[key] = lines[0]
    return found


# --------------------------------------------------------------------------- defaults and numbers


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yaml", "name: exp\n"))
    assert cfg == Config(name="exp")
    assert cfg.seed == 0
    assert cfg.model.arch == "resnet18" and cfg.model.weights is None and cfg.model.num_classes is None
    assert cfg.model.reset_head is False
    assert cfg.data.dataset == "fake" and cfg.data.batch_size == 64 and cfg.data.classes is None
    assert cfg.freeze.preset is None and cfg.freeze.rules == [] and cfg.freeze.batchnorm == "eval"
    assert cfg.train.epochs == 1 and cfg.train.device == "auto" and cfg.train.output_dir is None
    assert cfg.train.optimizer.name == "sgd"
    assert cfg.train.optimizer.lr == 0.01 and cfg.train.optimizer.momentum == 0.9
    assert cfg.output_dir == Path("runs/exp")


def test_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    assert load_yaml_tree(write(tmp_path / "empty.yaml", "")) == {}


def test_exponent_numbers_become_floats(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        """\
        name: exp
        train:
          optimizer:
            lr: 1e-3
            weight_decay: 5e-4
        """,
    )
    # The premise: PyYAML (YAML 1.1) reads these as strings, not numbers.
    raw = load_yaml_tree(path)
    assert raw["train"]["optimizer"]["lr"] == "1e-3"
    cfg = load_config(path)
    assert type(cfg.train.optimizer.lr) is float and cfg.train.optimizer.lr == 1e-3
    assert type(cfg.train.optimizer.weight_decay) is float and cfg.train.optimizer.weight_decay == 5e-4


def test_int_written_as_float_is_accepted_when_whole(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yaml", "name: exp\ntrain:\n  epochs: 2.0\n"))
    assert type(cfg.train.epochs) is int and cfg.train.epochs == 2


def test_int_with_fraction_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "c.yaml", "name: exp\ntrain:\n  epochs: 2.5\n"))
    assert info.value.problems == ["train.epochs: expected an integer, got 2.5"]
    assert info.value.source == str(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "tree, key",
    [
        ({"seed": True}, "seed"),
        ({"train": {"epochs": True}}, "train.epochs"),
        ({"data": {"batch_size": False}}, "data.batch_size"),
        ({"model": {"num_classes": True}}, "model.num_classes"),
        ({"train": {"optimizer": {"lr": True}}}, "train.optimizer.lr"),
    ],
)
def test_booleans_are_not_numbers(tree: dict, key: str) -> None:
    problems = problems_of({"name": "exp", **tree})
    assert len(problems) == 1
    assert problems[0].startswith(f"{key}: expected ")


def test_non_bool_rejected_for_bool() -> None:
    assert problems_of({"name": "exp", "model": {"reset_head": "yes please"}}) == [
        "model.reset_head: expected true or false, got 'yes please'"
    ]


def test_nan_learning_rate_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: exp\ntrain:\n  optimizer:\n    lr: .nan\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)  # today: returns a Config whose lr is nan
    assert any(p.startswith("train.optimizer.lr:") for p in info.value.problems)


# --------------------------------------------------------------------------- extends


def test_extends_relative_to_child_file_with_deep_merge(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml",
        """\
        name: base
        model:
          arch: resnet18
          num_classes: 10
        train:
          epochs: 5
          optimizer:
            name: sgd
            lr: 0.1
            momentum: 0.8
        """,
    )
    child = write(
        tmp_path / "sub" / "child.yaml",
        """\
        extends: ../base.yaml
        name: child
        model:
          reset_head: true
        train:
          optimizer:
            lr: 0.05
        """,
    )
    tree = load_yaml_tree(child)
    assert "extends" not in tree
    assert tree == {
        "name": "child",
        "model": {"arch": "resnet18", "num_classes": 10, "reset_head": True},
        "train": {"epochs": 5, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.8}},
    }
    cfg = load_config(child)
    assert cfg.name == "child"
    assert cfg.model.num_classes == 10 and cfg.model.reset_head is True
    assert cfg.train.epochs == 5
    assert cfg.train.optimizer.lr == 0.05 and cfg.train.optimizer.momentum == 0.8


def test_extends_replaces_lists_whole(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml",
        """\
        name: base
        data:
          classes: [0, 1, 2, 3]
        freeze:
          preset: linear_probe
          rules:
            - freeze: layer1
            - freeze: layer2
            - unfreeze: fc
        """,
    )
    child = write(
        tmp_path / "child.yaml",
        """\
        extends: base.yaml
        data:
          classes: [7, 8]
        freeze:
          rules:
            - freeze_type: BatchNorm2d
        """,
    )
    cfg = load_config(child)
    assert cfg.freeze.rules == [Rule("freeze_type", "BatchNorm2d", "freeze.rules[0]")]
    assert to_dict(cfg)["freeze"]["rules"] == [{"freeze_type": "BatchNorm2d"}]
    assert cfg.data.classes == [7, 8]
    assert cfg.freeze.preset == "linear_probe"  # sibling key in the same mapping is kept


def test_extends_chain_of_two(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "name: a\nseed: 1\ntrain:\n  epochs: 3\n  device: cpu\n")
    write(tmp_path / "mid" / "b.yaml", "extends: ../a.yaml\nseed: 2\ntrain:\n  epochs: 4\n")
    # c extends b by a path relative to c; b's own extends is relative to b.
    c = write(tmp_path / "c.yaml", "extends: mid/b.yaml\nname: c\ntrain:\n  max_steps_per_epoch: 7\n")
    cfg = load_config(c)
    assert (cfg.name, cfg.seed) == ("c", 2)
    assert cfg.train.epochs == 4 and cfg.train.device == "cpu" and cfg.train.max_steps_per_epoch == 7


def test_extends_list_later_parent_wins(tmp_path: Path) -> None:
    write(tmp_path / "p1.yaml", "seed: 1\ndata:\n  batch_size: 8\n")
    write(tmp_path / "p2.yaml", "seed: 2\ndata:\n  image_size: 16\n")
    c = write(tmp_path / "c.yaml", "extends: [p1.yaml, p2.yaml]\nname: c\n")
    assert load_yaml_tree(c) == {"seed": 2, "data": {"batch_size": 8, "image_size": 16}, "name": "c"}


def test_extends_cycle_raises(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\nseed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_tree(tmp_path / "a.yaml")
    assert len(info.value.problems) == 1
    assert "cycle" in info.value.problems[0]


def test_extends_self_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: a.yaml\nname: a\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_extends_missing_parent_raises(tmp_path: Path) -> None:
    child = write(tmp_path / "sub" / "child.yaml", "extends: ../nope.yaml\nname: c\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert info.value.problems[0].startswith(f"extends in {child}: file not found")  # which file says it
    assert "nope.yaml" in info.value.problems[0]


def test_a_missing_config_suggests_the_nearest_file_or_folder(tmp_path: Path) -> None:
    write(tmp_path / "configs" / "examples" / "own_images.yaml", "name: a\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "configs" / "examples" / "own_image.yaml")
    assert info.value.problems[0].endswith(f"did you mean {tmp_path / 'configs' / 'examples' / 'own_images.yaml'}?")
    child = write(tmp_path / "child.yaml", "extends: configs/example/own_images.yaml\nname: c\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert info.value.problems[0].endswith(f"did you mean {tmp_path / 'configs' / 'examples'}/?")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "zzz" / "qqq.yaml")
    assert info.value.problems[0].endswith(f"(no such file in {tmp_path})")


def test_extends_must_name_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extends"):
        load_yaml_tree(write(tmp_path / "c.yaml", "extends: 3\nname: c\n"))


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


def test_invalid_yaml_and_non_mapping_top_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_tree(write(tmp_path / "bad.yaml", "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml_tree(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


# --------------------------------------------------------------------------- overrides


def test_overrides_parsed_as_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: exp\nmodel:\n  weights: DEFAULT\ndata:\n  classes: [0, 1]\n")
    cfg = load_config(
        path,
        [
            "train.epochs=3",
            "freeze.preset=linear_probe",
            "model.weights=null",
            "data.classes=[5,6,7]",
            "train.optimizer.lr=1e-3",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.freeze.preset == "linear_probe"
    assert cfg.model.weights is None
    assert cfg.data.classes == [5, 6, 7]
    assert type(cfg.train.optimizer.lr) is float and cfg.train.optimizer.lr == 1e-3


def test_overrides_do_not_mutate_the_input_tree() -> None:
    tree = {"name": "exp", "train": {"epochs": 1, "optimizer": {"lr": 0.1}}}
    out = apply_overrides(tree, ["train.optimizer.lr=0.5", "train.epochs=9"])
    assert out["train"] == {"epochs": 9, "optimizer": {"lr": 0.5}}
    assert tree == {"name": "exp", "train": {"epochs": 1, "optimizer": {"lr": 0.1}}}


def test_override_creates_missing_mappings() -> None:
    assert apply_overrides({}, ["train.optimizer.momentum=0.5"]) == {"train": {"optimizer": {"momentum": 0.5}}}


def test_later_override_wins() -> None:
    assert apply_overrides({}, ["seed=1", "seed=2"]) == {"seed": 2}


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train..epochs=3", "1train=3"])
def test_malformed_override_raises(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({"name": "exp"}, [bad])
    assert len(info.value.problems) == 1
    assert repr(bad) in info.value.problems[0]
    assert info.value.source == "command line"


def test_all_malformed_overrides_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({"name": "exp"}, ["train.epochs", "seed=1", "=3"])
    assert len(info.value.problems) == 2


def test_override_through_a_scalar_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: exp\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["name.x=1"])
    assert info.value.problems == ["override 'name.x=1': name is not a mapping"]


def test_override_of_unknown_key_is_caught_by_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "c.yaml", "name: exp\n"), ["train.epoch=3"])
    assert info.value.problems == ["train.epoch: unknown key; did you mean epochs? (set on the command line)"]


def test_read_config_returns_the_problems_for_a_caller_to_add_its_own(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: exp\ntrain: {epochz: 3}\n")
    cfg, problems = read_config(path, ["train.epoch=3", "seed=2"])
    assert cfg.seed == 2 and cfg.train.epochs == Config().train.epochs  # converted as far as it goes
    assert problems == [
        "train.epochz: unknown key; did you mean epochs?",
        "train.epoch: unknown key; did you mean epochs? (set on the command line)",
    ]
    assert mark_edited(["seed: x", "seeds: y", "train.epochs: z"], ["seed=1", "train=2"]) == [
        "seed: x (set on the command line)",
        "seeds: y",
        "train.epochs: z (set on the command line)",
    ]


# --------------------------------------------------------------------------- strictness


def test_structural_problems_all_reported_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        """\
        name: exp
        trian:
          epochs: 2
        model:
          arhc: resnet18
        data:
          dataset: fashion-mnist
          batch_size: big
        train:
          epochs: 0
          device: gpu
          optimizer:
            name: adamax
            lr: 0
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert len(err.problems) == 8
    assert str(err).startswith(f"8 config problems in {path}:")
    keys = [
        "trian",
        "model.arhc",
        "data.dataset",
        "data.batch_size",
        "train.epochs",
        "train.device",
        "train.optimizer.name",
        "train.optimizer.lr",
    ]
    by_key = one_problem_per_key(err.problems, keys)
    assert "unknown key" in by_key["trian"] and "did you mean train" in by_key["trian"]
    assert "unknown key" in by_key["model.arhc"] and "did you mean arch" in by_key["model.arhc"]
    assert "'fashion-mnist'" in by_key["data.dataset"]
    assert "fashion_mnist, fake, imagefolder" in by_key["data.dataset"]
    assert "did you mean 'fashion_mnist'" in by_key["data.dataset"]
    assert by_key["data.batch_size"] == "data.batch_size: expected an integer, got 'big'"
    assert by_key["train.epochs"] == "train.epochs: 0 must be >= 1"
    assert "'gpu'" in by_key["train.device"] and "auto, cpu, cuda" in by_key["train.device"]
    assert "sgd, adam, adamw" in by_key["train.optimizer.name"]
    assert "did you mean 'adam'" in by_key["train.optimizer.name"]
    assert by_key["train.optimizer.lr"] == "train.optimizer.lr: 0.0 must be > 0.0"
    # Every line of the message names its key.
    for key in keys:
        assert f"  - {key}:" in str(err)


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    (problem,) = problems_of({"name": "exp", "zzzzzz": 1})
    assert problem.startswith("zzzzzz: unknown key; valid keys: name, seed, seeds, model, data, freeze, train")


def test_section_must_be_a_mapping() -> None:
    assert problems_of({"name": "exp", "train": 5}) == ["train: expected a mapping, got 5"]
    assert problems_of({"name": "exp", "model": None}) == ["model: must not be null"]


@pytest.mark.parametrize("preset", ["full", "linear_probe", "bitfit", "until:layer3"])
def test_valid_presets_accepted(preset: str) -> None:
    assert from_dict({"name": "exp", "freeze": {"preset": preset}}).freeze.preset == preset


@pytest.mark.parametrize("preset", ["until:", "linear-probe", "Full"])
def test_invalid_presets_rejected(preset: str) -> None:
    (problem,) = problems_of({"name": "exp", "freeze": {"preset": preset}})
    assert problem.startswith("freeze.preset:")


def test_non_mapping_freeze_rule_is_a_type_problem() -> None:
    assert problems_of({"name": "exp", "freeze": {"rules": ["layer1"]}}) == [
        "freeze.rules[0]: expected a mapping, got 'layer1'"
    ]


@pytest.mark.parametrize(
    "classes, dataset, fragment",
    [
        ([], "fake", "names 0 classes; a classifier needs two or more"),
        ([3], "fake", "names 1 class; a classifier needs two or more"),
        ([0, -1], "fake", "negative"),
    ],
)
def test_bad_classes(classes: list[int], dataset: str, fragment: str) -> None:
    (problem,) = problems_of({"name": "exp", "data": {"classes": classes, "dataset": dataset}})
    assert problem.startswith("data.classes:") and fragment in problem


def test_a_key_given_twice_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    path = write(
        tmp_path / "twice.yaml", "name: exp\ndata: {dataset: imagefolder, root: pics}\ndata: {batch_size: 16}\n"
    )
    with pytest.raises(ConfigError, match=r"key 'data' appears twice \(lines 2 and 3\)"):
        load_config(path)


def test_a_config_that_is_not_utf8_or_is_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("name: exp  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)


def test_numbers_that_cannot_work_are_refused() -> None:
    problems = problems_of(
        {
            "name": "x" * 101,
            "data": {"num_workers": 100000, "image_size": 20000},
            "train": {"optimizer": {"momentum": 5}},
        }
    )
    assert "name: 101 characters; at most 100 (it names the run folder)" in problems
    assert any(p.startswith("data.num_workers: 100000 is more than 4 x the") for p in problems)
    assert "data.image_size: 20000 must be <= 4096" in problems
    assert "train.optimizer.momentum: 5.0 must be <= 1.0" in problems


@pytest.mark.parametrize("name", ["модель_测试", "café-2", "हिन्दी", "x1.v2", "Ünïcödé"])
def test_a_run_name_may_be_letters_of_any_script(name: str) -> None:
    cfg = from_dict({"name": name})
    assert cfg.output_dir == Path("runs") / name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a b", "name: 'a b' must be a non-empty run name of letters (of any script), digits"),
        ("_x", "name: '_x' must be a non-empty run name of letters (of any script), digits"),
        ("модель/测试", "name: 'модель/测试' must be a non-empty run name of letters (of any script), digits"),
        ("测" * 34, "name: 34 characters, 102 bytes; at most 100 bytes in UTF-8 (it names the run folder)"),
        (
            "cafe\u0301",  # 'é' as e + a combining accent: on macOS the same folder as the composed 'é'
            "name: 'cafe\u0301' is not in Unicode NFC form, so it could name two folders on one system and one on "
            "another. HINT: name: caf\u00e9 (the same letters, composed)",
        ),
    ],
    ids=["space", "underscore-first", "separator", "too-many-bytes", "not-nfc"],
)
def test_a_run_name_that_could_not_name_one_folder_everywhere_is_refused(name: str, problem: str) -> None:
    problems = problems_of({"name": name})
    assert len(problems) == 1 and problems[0].startswith(problem)


def test_yaml_booleans_and_mappings_where_a_choice_belongs_get_a_quoting_hint() -> None:
    problems = problems_of({"name": "exp", "freeze": {"frozen_modules": False, "preset": {"until": None}}})
    assert problems == [
        "freeze.preset: expected a string, got the mapping {'until': None}: quote it, e.g. 'until:layer3'",
        "freeze.frozen_modules: expected one of eval, train, got False (YAML reads an unquoted on/off/yes/no as "
        "true/false: quote it)",
    ]


def test_an_invalid_epoch_count_adds_no_second_problem() -> None:
    assert problems_of({"name": "exp", "train": {"epochs": -1}}) == ["train.epochs: -1 must be >= 1"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0, "train.threads: 0 must be >= 1"),
        (-2, "train.threads: -2 must be >= 1"),
        (1.5, "train.threads: expected an integer, got 1.5"),
        ("auto", "train.threads: expected an integer, got 'auto'"),
        (True, "train.threads: expected an integer, got True"),
        (4096, "train.threads: 4096 must be <= 1024"),
    ],
)
def test_train_threads_is_a_count_of_one_or_more(value: object, problem: str) -> None:
    assert problems_of({"name": "exp", "train": {"threads": value}}) == [problem]


def test_train_threads_defaults_to_torchs_own_and_takes_an_edit() -> None:
    assert from_dict({"name": "exp"}).train.threads is None
    assert from_dict({"name": "exp", "train": {"threads": 1}}).train.threads == 1


def test_class_list_mixing_indices_and_names_is_refused() -> None:
    assert problems_of({"name": "exp", "data": {"classes": [1, "two"]}}) == [
        "data.classes: [1, 'two'] must be all class indices (integers) or all class names (strings)"
    ]


@pytest.mark.parametrize("name", ["", "has space", "a/b"])
def test_bad_run_names(name: str) -> None:
    (problem,) = problems_of({"name": name})
    assert problem.startswith("name:")


# --------------------------------------------------------------------------- to_dict / from_dict


def test_to_dict_fills_output_dir_from_name() -> None:
    cfg = from_dict({"name": "exp"})
    assert cfg.train.output_dir is None
    d = to_dict(cfg)
    assert d["train"]["output_dir"] == str(Path("runs/exp"))
    assert d["name"] == "exp" and d["train"]["optimizer"]["lr"] == 0.01
    assert cfg.train.output_dir is None  # to_dict does not edit the config


def test_to_dict_keeps_explicit_output_dir() -> None:
    cfg = from_dict({"name": "exp", "train": {"output_dir": "elsewhere/x"}})
    assert to_dict(cfg)["train"]["output_dir"] == "elsewhere/x"
    assert cfg.output_dir == Path("elsewhere/x")


def test_round_trip_through_from_dict(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        """\
        name: rt
        seed: 3
        model:
          weights: DEFAULT
          num_classes: 4
          reset_head: true
        data:
          dataset: fashion_mnist
          classes: [1, 3, 5]
        freeze:
          preset: until:layer3
          rules:
            - unfreeze_type: BatchNorm2d
          batchnorm: train
        train:
          epochs: 2
          optimizer:
            name: adamw
            lr: 3e-4
            weight_decay: 1e-2
        """,
    )
    cfg = load_config(path)
    d = to_dict(cfg)
    again = from_dict(d)
    # The dict is the *resolved* config: output_dir is filled in, everything else equal.
    assert again == dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir="runs/rt"))
    assert again.output_dir == cfg.output_dir
    assert to_dict(again) == d
    # And it survives the YAML file written to the run folder.
    saved = write(tmp_path / "run" / "config.yaml", yaml.safe_dump(d))
    assert load_config(saved) == again


def test_records_are_read_once_into_typed_records() -> None:
    cfg = from_dict(
        {
            "name": "exp",
            "freeze": {
                "rules": [{"freeze": "layer1"}],
                "schedule": [{"unfreeze": "layer1", "epoch": 2, "lr_scale": 0.5}],
            },
            "train": {"epochs": 2, "param_groups": [{"match": "fc", "weight_decay": 0}]},
        }
    )
    assert cfg.freeze.rules == [Rule("freeze", "layer1", "freeze.rules[0]")]
    assert cfg.freeze.schedule == [EventSpec(2, "unfreeze", "layer1", 0.5, "freeze.schedule[0]")]
    assert cfg.train.param_groups == [GroupRule("fc", 1.0, 0.0, "train.param_groups[0]")]


def test_records_are_written_back_exactly_as_read() -> None:
    # Key order, a YAML 1.1 exponent read as text, a default left out and a null written out:
    # config.yaml and resume's comparison see the mapping the user wrote, not one rebuilt from fields.
    events = [{"unfreeze": "layer4", "lr_scale": "1e-1", "epoch": 2}, {"epoch": 2, "freeze": "layer3"}]
    groups = [{"match": "fc", "weight_decay": None, "lr_scale": 2}, {"lr_scale": 1.0, "match": "layer4"}]
    tree = {"name": "exp", "freeze": {"schedule": events}, "train": {"epochs": 2, "param_groups": groups}}
    d = to_dict(from_dict(tree))
    assert d["freeze"]["schedule"] == events and list(d["freeze"]["schedule"][0]) == ["unfreeze", "lr_scale", "epoch"]
    assert d["train"]["param_groups"] == groups and list(d["train"]["param_groups"][0]) == list(groups[0])
    d["freeze"]["schedule"][0]["epoch"] = 3  # a copy: the config's records keep their source
    assert to_dict(from_dict(tree))["freeze"]["schedule"][0]["epoch"] == 2


def test_records_made_in_code_are_written_from_their_fields() -> None:
    assert Rule("until", "layer3", "x").to_yaml() == {"until": "layer3"}
    assert EventSpec(3, "unfreeze", "layer4", 0.1, "x").to_yaml() == {"epoch": 3, "unfreeze": "layer4", "lr_scale": 0.1}
    assert EventSpec(3, "freeze", "layer4", 1.0, "x").to_yaml() == {"epoch": 3, "freeze": "layer4"}
    assert GroupRule("fc", 2.0, None, "x").to_yaml() == {"match": "fc", "lr_scale": 2.0}
    assert GroupRule("fc", 1.0, 0.0, "x").to_yaml() == {"match": "fc", "lr_scale": 1.0, "weight_decay": 0.0}


def test_a_bad_record_keeps_the_index_it_has_in_the_file() -> None:
    # A null or non-mapping item is a type problem; the items after it keep their own index.
    assert problems_of({"name": "exp", "freeze": {"rules": [None, "layer1", {"freez": "fc"}]}}) == [
        "freeze.rules[0]: must not be null",
        "freeze.rules[1]: expected a mapping, got 'layer1'",
        "freeze.rules[2]: unknown rule kind 'freez'; valid: freeze, unfreeze, freeze_type, unfreeze_type, until; "
        "did you mean 'freeze'?",
    ]


def test_round_trip_with_explicit_output_dir_is_exact() -> None:
    cfg = from_dict({"name": "exp", "data": {"classes": [2, 0]}, "train": {"output_dir": "out/exp"}})
    assert from_dict(to_dict(cfg)) == cfg


def test_bare_on_and_off_mean_the_choices_not_booleans(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: exp\ntrain:\n  cache_features: on\n")
    assert load_config(path).train.cache_features == "on"
    assert load_config(path, ["train.cache_features=off"]).train.cache_features == "off"
    assert load_config(path, ["train.cache_features=auto"]).train.cache_features == "auto"


# --------------------------------------------------------------------------- schedules, groups, scheduler


def test_scheduler_shorthand_and_mapping_are_the_same() -> None:
    short = from_dict({"name": "s", "train": {"scheduler": "cosine"}})
    full = from_dict({"name": "s", "train": {"scheduler": {"name": "cosine"}}})
    assert short.train.scheduler == full.train.scheduler
    assert short.train.scheduler.name == "cosine" and short.train.scheduler.warmup_epochs == 0.0
    assert to_dict(short)["train"]["scheduler"]["name"] == "cosine"


def test_scheduler_problems_are_named() -> None:
    problems = problems_of(
        {
            "name": "s",
            "train": {
                "epochs": 2,
                "layer_decay": 1.5,
                "save": "half",
                "scheduler": {"name": "onecycle", "warmup_epochs": 1},
            },
        }
    )
    found = one_problem_per_key(problems, ["train.layer_decay", "train.save", "train.scheduler.warmup_epochs"])
    assert "must be <= 1.0" in found["train.layer_decay"]
    assert "'half' is not one of full, delta" in found["train.save"]
    assert "onecycle warms up by itself" in found["train.scheduler.warmup_epochs"]
    assert problems_of({"name": "s", "train": {"epochs": 2, "scheduler": {"name": "cosine", "warmup_epochs": 3}}}) == [
        "train.scheduler.warmup_epochs: 3.0 is longer than the run (2 epochs)"
    ]
    assert problems_of({"name": "s", "train": {"scheduler": "cosin"}}) == [
        "train.scheduler.name: 'cosin' is not one of none, cosine, step, onecycle; did you mean 'cosine'?"
    ]


def test_schedule_and_group_problems_need_no_model() -> None:
    problems = problems_of(
        {
            "name": "s",
            "freeze": {"schedule": [{"epoch": 5, "unfreeze": "layer4"}, {"epoch": 2, "freez": "layer3"}]},
            "train": {"epochs": 3, "param_groups": [{"match": "layer4", "lr_scale": "-1"}]},
        }
    )
    assert "freeze.schedule[0]: epoch 5 is past the last epoch (train.epochs is 3): it would never happen" in problems
    assert any(p.startswith("freeze.schedule[1]: unknown key(s) freez") for p in problems)
    assert any(p.startswith("train.param_groups[0].lr_scale: expected a finite number > 0") for p in problems)


@pytest.mark.parametrize(
    ("epochs", "auto", "problem"),
    [
        (
            3,
            {"warmup_epochs": 5},
            "freeze.auto.warmup_epochs: 5: auto decides first after epoch 5 and a decision acts from the next epoch, "
            "so with train.epochs 3 it could never freeze anything. HINT: freeze.auto.warmup_epochs: 2 or less, or "
            "train.epochs: 6 or more",
        ),
        (
            3,
            {"warmup_epochs": 3},
            "freeze.auto.warmup_epochs: 3: auto decides first after epoch 3 and a decision acts from the next epoch, "
            "so with train.epochs 3 it could never freeze anything. HINT: freeze.auto.warmup_epochs: 2 or less, or "
            "train.epochs: 4 or more",
        ),
        *(
            (
                epochs,
                {},
                f"train.epochs: {epochs} is too short for freeze.preset auto: it decides first after epoch 2 (a change "
                "rate needs two epochs) and a decision acts from the next epoch, so it could never freeze anything. "
                "HINT: train.epochs: 3 or more, or a fixed preset (e.g. freeze.preset: full)",
            )
            for epochs in (1, 2)
        ),
    ],
    ids=["warmup-past-the-end", "warmup-at-the-end", "default-epochs-1", "epochs-2"],
)
def test_an_auto_policy_that_could_never_act_is_refused_like_an_event_past_the_end(
    epochs: int, auto: dict, problem: str
) -> None:
    tree = {"name": "s", "freeze": {"preset": "auto", "auto": auto}, "train": {"epochs": epochs}}
    if epochs == 1:
        del tree["train"]  # the default: one epoch
    assert problems_of(tree) == [problem]
    # One epoch more, and the first decision acts in the last epoch: accepted.
    tree["train"] = {"epochs": max(auto.get("warmup_epochs", 2), 2) + 1}
    assert from_dict(tree).freeze.preset == "auto"


def test_a_config_knows_whether_its_trainable_set_changes() -> None:
    assert not from_dict({"name": "s"}).freeze.scheduled
    assert from_dict(
        {"name": "s", "freeze": {"preset": "gradual", "gradual": ["layer4"]}, "train": {"epochs": 2}}
    ).freeze.scheduled
    assert from_dict(
        {"name": "s", "freeze": {"schedule": [{"epoch": 2, "unfreeze": "fc"}]}, "train": {"epochs": 2}}
    ).freeze.scheduled


def test_a_scalar_where_a_list_belongs_is_one_problem() -> None:
    assert problems_of({"name": "exp", "train": {"optimizer": {"name": "adam", "betas": 0.9}}}) == [
        "train.optimizer.betas: expected a list, got 0.9"
    ]
