"""Config files into a typed :class:`~freezetune.config.schema.Config`.

A config file is plain YAML; it may name a parent with ``extends: other.yaml``
(resolved relative to the file) and is then edited by ``key=value`` overrides.
The merged mapping is converted into dataclasses by :func:`from_dict`, which
collects *every* problem (unknown key, wrong type, bad choice, and the checks of
freezetune.config.validate) before raising one :class:`ConfigError` that names
each dotted key; :func:`read_config` returns them instead, for freezetune.checks
to add the model's and the data's.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from freezetune.config.records import EventSpec, GroupRule, RecordKind, Rule
from freezetune.config.schema import Config, ConfigError
from freezetune.config.validate import semantic_problems
from freezetune.config.values import number

__all__ = [
    "apply_overrides",
    "convert",
    "from_dict",
    "load_config",
    "load_yaml_tree",
    "mark_edited",
    "read_config",
    "read_records",
    "set_key",
    "to_dict",
]

T = TypeVar("T")


# --------------------------------------------------------------------------- loading


def load_yaml_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and merge it over the files it ``extends`` (depth first)."""
    path = Path(path).resolve()
    raw = _read_yaml(path, _seen)
    parents = raw.pop("extends", None)
    if parents is None:
        return raw
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError([f"extends: expected a file name or a list of them, got {parents!r}"], str(path))
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = _deep_merge(merged, load_yaml_tree(path.parent / parent, (*_seen, path)))
    return _deep_merge(merged, raw)


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The mapping of one config file; ConfigError when it is no such file (``seen``: the files
    that extend it, to name the chain) or not a YAML mapping."""
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError([f"extends: cycle {chain}"], str(path))
    if path.is_dir():
        raise ConfigError([f"{path} is a folder, not a config file (a .yaml file)"])
    if not path.is_file():
        what = f"extends in {seen[-1]}" if seen else "config"
        raise ConfigError([f"{what}: file not found: {path}{_nearest_file(path)}"])
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text (byte {exc.start}): save the config as UTF-8"], str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], str(path))
    return raw


def _nearest_file(path: Path) -> str:
    """'; did you mean X?' for the closest existing .yaml/.yml file name in the nearest existing
    folder on the way to ``path`` (a typo in the file name or in a folder), else ''."""
    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    names = [p.name for p in folder.glob("*.y*ml")] + [p.name + "/" for p in folder.iterdir() if p.is_dir()]
    wanted = path.name if folder == path.parent else path.relative_to(folder).parts[0] + "/"
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    if not close:
        return f" (no such file in {folder})"
    return f"; did you mean {folder / close[0]}{'/' if close[0].endswith('/') else ''}?"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: by
    default the last one silently wins (a second ``data:`` block would drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    # Mappings merge key by key; lists and scalars are replaced whole, so a child
    # config's `freeze.rules` is exactly what it says, never a surprise union.
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def set_key(tree: dict[str, Any], key: str, value: Any) -> str | None:
    """Set the dotted ``key`` of ``tree`` to ``value`` in place, creating the mappings on the way
    (each one on the way is copied, so a tree shared with another is not changed through it).
    Returns the dotted prefix that is no mapping when one blocks the way (nothing set), else None."""
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            return ".".join(parts[: i + 1])
        else:
            child = node[part] = dict(child)
        node = child
    node[parts[-1]] = value
    return None


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` edits; values are parsed as YAML (``2``, ``null``, ``[1, 2]``)."""
    out = _deep_merge({}, tree)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            problems.append(f"override {item!r}: expected key=value with a dotted key, e.g. train.epochs=2")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        blocked = set_key(out, key, value)
        if blocked:
            problems.append(f"override {item!r}: {blocked} is not a mapping")
    if problems:
        raise ConfigError(problems, "command line")
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, merge, override and validate a config file; raise ConfigError on any problem.

    Checks the config alone; freezetune.checks.load adds what the model and the data say."""
    cfg, problems = read_config(path, overrides)
    if problems:
        raise ConfigError(problems, str(path))
    return cfg


def read_config(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, list[str]]:
    """Load, merge, override and convert a config file, and every problem found on the way
    (:func:`mark_edited` marked), so that a caller can add its own before raising.

    Raises:
        ConfigError: only when there is nothing to convert: no such file, not YAML, a malformed
            ``key=value``.
    """
    tree = apply_overrides(load_yaml_tree(path), overrides or [])
    cfg, problems = convert(tree)
    return cfg, mark_edited(problems, overrides or [])


def mark_edited(problems: list[str], overrides: list[str]) -> list[str]:
    """``problems`` with `` (set on the command line)`` added to each one about a key that a
    ``key=value`` edit in ``overrides`` set, rather than the file."""
    edited = [item.partition("=")[0] for item in overrides]
    return [p + (" (set on the command line)" if _under_any(p, edited) else "") for p in problems]


def _under_any(problem: str, keys: list[str]) -> bool:
    where = problem.split(":", 1)[0]
    return any(where == k or where.startswith((k + ".", k + "[")) for k in keys)


# --------------------------------------------------------------------------- conversion


def from_dict(tree: dict[str, Any], source: str | None = None) -> Config:
    """Convert a merged mapping into a validated :class:`Config`."""
    cfg, problems = convert(tree)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def convert(tree: dict[str, Any]) -> tuple[Config, list[str]]:
    """A merged mapping as a :class:`Config`, and every problem with it, one line each (empty:
    none). A key with a problem holds None or its default, so that later checks can go on."""
    problems: list[str] = []
    cfg = _convert(Config, tree, "", problems)
    try:
        # Run even after type problems, so one error lists everything; fields
        # that failed their type check hold None or their default here.
        problems.extend(semantic_problems(cfg))
    except (TypeError, AttributeError):
        pass  # a value too broken to check further is already reported above
    return cfg, problems


def read_records(kind: RecordKind[T], raw: Iterable[object], origin: str) -> list[T]:
    """One list of records written in code, read as the loader reads a config's:
    ``read_records(RULES, [{"freeze": "layer1"}], "freeze.rules")`` for
    :func:`freezetune.plan.plan_from_config`.

    Raises:
        ConfigError: listing every problem, each named ``origin[i]``.
    """
    records, problems = kind.parse(raw, origin)
    if problems:
        raise ConfigError(problems)
    return records


def to_dict(cfg: Config) -> dict[str, Any]:
    """The fully resolved config as plain data (output_dir filled in); rules, events and groups
    as the YAML they were read from."""
    out = _plain(cfg)
    out["train"]["output_dir"] = str(cfg.output_dir)
    if not cfg.freeze.adapters:
        # Absent when there are none, as before the key existed: a run recorded then still
        # resumes, and compare still finds it finished, under a config that has none either.
        del out["freeze"]["adapters"]
    return out


def _plain(value: Any) -> Any:
    # dataclasses.asdict, except that a record goes back to its YAML form, not to its fields.
    if isinstance(value, (Rule, EventSpec, GroupRule)):
        return value.to_yaml()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def _convert(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{path or '<root>'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else f"; valid keys: {', '.join(fields)}"
            problems.append(f"{_join(path, str(key))}: unknown key{hint}")
    values = {}
    for name, f in fields.items():
        if name in raw and "records" in f.metadata:
            values[name] = _records(f.metadata["records"], raw[name], _join(path, name), problems)
        elif name in raw:
            values[name] = _value(hints[name], raw[name], _join(path, name), f.metadata, problems)
    try:
        return cls(**values)
    except TypeError:  # only reached after a problem was already recorded
        return cls()


def _value(tp: Any, value: Any, path: str, meta: Any, problems: list[str]) -> Any:
    optional, tp = _unwrap_optional(tp)
    if value is None:
        if not optional:
            problems.append(f"{path}: must not be null")
        return None
    if dataclasses.is_dataclass(tp):
        shorthand = getattr(tp, "SHORTHAND", None)
        if shorthand and isinstance(value, str):
            value = {shorthand: value}
        return _convert(tp, value, path, problems)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {value!r}")
            return None  # not [], which later checks would report as a second, invented problem
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_value(item_tp, v, f"{path}[{i}]", {}, problems) for i, v in enumerate(value)]
    if isinstance(value, bool) and meta and {"on", "off"} <= set(meta.get("choices", ())):
        value = "on" if value else "off"  # YAML 1.1 (PyYAML) reads a bare on/off as a boolean
    converted = _scalar(tp, value)
    if converted is _BAD:
        problems.append(_scalar_problem(tp, value, path, meta))
        return None
    _check_bounds(converted, path, meta, problems)
    return converted


def _records(kind: RecordKind[Any], value: Any, path: str, problems: list[str]) -> list[Any] | None:
    """``freeze.rules``, ``freeze.schedule`` or ``train.param_groups`` read once into typed records
    (freezetune.config.records): a list of mappings as the schema's other lists are checked, then
    each mapping through ``kind``; the records with problems are left out, their problems noted."""
    items = _value(list[dict], value, path, {}, problems)
    if items is None:
        return None
    records = []
    for i, item in enumerate(items):
        record = kind.read_one(item, f"{path}[{i}]", problems) if item is not None else None
        if record is not None:
            records.append(record)
    return records


def _scalar_problem(tp: Any, value: Any, path: str, meta: Any) -> str:
    """Why ``value`` is no ``tp``, with the likely cause where YAML's reading explains it."""
    if isinstance(value, bool) and meta and meta.get("was_switch"):
        now = meta["was_switch"] if value else "none"
        return (
            f"{path}: a choice now, not a switch: {now!r} for what {str(value).lower()} meant; "
            f"one of {', '.join(meta['choices'])}"
        )
    if tp is str and meta and meta.get("choices"):
        quoted = " (YAML reads an unquoted on/off/yes/no as true/false: quote it)" if isinstance(value, bool) else ""
        return f"{path}: expected one of {', '.join(meta['choices'])}, got {value!r}{quoted}"
    if tp is str and isinstance(value, dict) and len(value) == 1 and None in value.values():
        # `preset: until:` is read as the mapping {until: None}
        return f"{path}: expected a string, got the mapping {value!r}: quote it, e.g. 'until:layer3'"
    return f"{path}: expected {_type_name(tp)}, got {value!r}"


_BAD = object()


def _scalar(tp: Any, value: Any) -> Any:
    if tp is bool:
        return value if isinstance(value, bool) else _BAD
    if tp is int:
        if isinstance(value, bool):
            return _BAD
        if isinstance(value, int):
            return value
        n = number(value)
        return int(n) if n is not None and float(n).is_integer() else _BAD
    if tp is float:
        if isinstance(value, bool):
            return _BAD
        n = number(value)
        # YAML 1.1 (PyYAML) reads `1e-3` as a string: accept any text float() accepts.
        return float(n) if n is not None else _BAD
    if tp is str:
        return value if isinstance(value, str) else _BAD
    if tp is dict:
        return value if isinstance(value, dict) else _BAD
    if tp is Any:
        return value
    return _BAD


def _check_bounds(value: Any, path: str, meta: Any, problems: list[str]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        # NaN compares False with everything: it would slip past every bound below.
        problems.append(f"{path}: {value!r} must be a finite number")
        return
    choices = meta.get("choices") if meta else None
    if choices and value not in choices:
        near = difflib.get_close_matches(str(value), list(choices), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        problems.append(f"{path}: {value!r} is not one of {', '.join(choices)}{hint}")
    if meta and "min" in meta and value < meta["min"]:
        problems.append(f"{path}: {value!r} must be >= {meta['min']}")
    if meta and "min_exclusive" in meta and value <= meta["min_exclusive"]:
        problems.append(f"{path}: {value!r} must be > {meta['min_exclusive']}")
    if meta and "max" in meta and value > meta["max"]:
        problems.append(f"{path}: {value!r} must be <= {meta['max']}")


def _unwrap_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(args) < len(typing.get_args(tp)), args[0]
    return False, tp


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        tp, str(tp)
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
