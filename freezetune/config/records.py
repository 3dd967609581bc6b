"""The YAML lists of records in a config: freezing rules (``freeze.rules``), schedule
events (``freeze.schedule``, ``freeze.gradual``) and optimizer groups
(``train.param_groups``), read by one loop into typed records: once, by the config loader
(freezetune.config.load), into the Config that freezetune.plan then takes.

Only their *syntax* is checked here (shape, keys, types, numbers); whether a name
matches anything in a model is freezetune.plan's business, once a model exists.
Every problem names the record by its place (``freeze.schedule[1]``) and, where
it concerns one key, that key's dotted path: ``freeze.schedule[1].lr_scale: expected ...``.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, Union

from freezetune.config.values import finite_number

__all__ = [
    "EVENTS",
    "EVENT_KINDS",
    "GROUPS",
    "PRESETS",
    "RULES",
    "RULE_KINDS",
    "EventSpec",
    "GroupRule",
    "Record",
    "RecordKind",
    "Rule",
    "gradual_events",
    "parse_events",
    "parse_param_groups",
    "parse_records",
    "parse_rules",
]

RULE_KINDS = ("freeze", "unfreeze", "freeze_type", "unfreeze_type", "until")
PRESETS = ("full", "linear_probe", "bitfit", "gradual", "auto", "until:<module>")
EVENT_KINDS = ("freeze", "unfreeze", "freeze_type", "unfreeze_type")  # rules' selectors but `until`
_EVENT_KEYS = ("epoch", *EVENT_KINDS, "lr_scale")
_GROUP_KEYS = ("match", "lr_scale", "weight_decay")

T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    """One freezing rule: ``{kind: target}``, e.g. ``{freeze: layer1}``."""

    kind: Literal["freeze", "unfreeze", "freeze_type", "unfreeze_type", "until"]
    target: str
    origin: str  # where it came from: "freeze.rules[2]" or "preset linear_probe"
    optional: bool = False  # preset helpers that may legitimately match nothing
    # The mapping it was read from, written back as it was (config.yaml, resume's comparison).
    source: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def freezes(self) -> bool:
        """Whether the parameters it selects end up frozen."""
        return self.kind in ("freeze", "freeze_type", "until")

    def __str__(self) -> str:
        return f"{{{self.kind}: {self.target}}}"

    def to_yaml(self) -> dict[str, Any]:
        """The rule as the config's YAML holds it."""
        return _yaml(self.source, {self.kind: self.target})


@dataclass(frozen=True)
class EventSpec:
    """A schedule event as configured, before it is resolved against a model."""

    epoch: int
    kind: str  # "freeze", "unfreeze", "freeze_type" or "unfreeze_type"
    target: str
    lr_scale: float  # multiplies the LR of the parameters it unfreezes
    origin: str  # "freeze.schedule[0]" or "freeze.gradual[1]"
    source: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)  # as Rule.source

    @property
    def rule(self) -> Rule:
        """The freezing rule the event appends to the plan when it happens."""
        return Rule(self.kind, self.target, self.origin)  # type: ignore[arg-type]

    def to_yaml(self) -> dict[str, Any]:
        """The event as ``freeze.schedule`` holds it."""
        scale = {"lr_scale": self.lr_scale} if self.lr_scale != 1.0 else {}
        return _yaml(self.source, {"epoch": self.epoch, self.kind: self.target, **scale})


@dataclass(frozen=True)
class GroupRule:
    """One ``train.param_groups`` entry: what it matches and what it sets."""

    match: str
    lr_scale: float
    weight_decay: float | None  # None: the optimizer's weight_decay
    origin: str  # "train.param_groups[0]"
    source: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)  # as Rule.source

    def to_yaml(self) -> dict[str, Any]:
        """The group as ``train.param_groups`` holds it."""
        wd = {"weight_decay": self.weight_decay} if self.weight_decay is not None else {}
        return _yaml(self.source, {"match": self.match, "lr_scale": self.lr_scale, **wd})


Record = Union[Rule, EventSpec, GroupRule]


def _yaml(source: Mapping[str, Any] | None, made: dict[str, Any]) -> dict[str, Any]:
    # A record read from YAML goes back exactly as written (key order, `lr_scale: 1e-1` as text,
    # an absent default left absent); one made in code has no source and is written from its fields.
    return copy.deepcopy(dict(source)) if source is not None else made


class Fields:
    """One record's mapping, read key by key; each problem is noted, never raised."""

    def __init__(self, item: dict[Any, Any], where: str) -> None:
        self.item = item
        self.where = where  # the record's name in problems and in the record itself: "freeze.rules[2]"
        self.problems: list[str] = []

    def problem(self, text: str, key: str | None = None) -> None:
        """Note a problem with the record, or with one of its keys (named by its dotted path)."""
        self.problems.append(f"{self.where}.{key}: {text}" if key else f"{self.where}: {text}")

    def name(self, key: str) -> str | None:
        """A non-empty string: a module name, parameter name, glob or class name."""
        value = self.item.get(key)
        if not isinstance(value, str) or not value:
            self.problem(f"expected a non-empty name or pattern, got {value!r}", key)
            return None
        if "[" in value and "]" not in value[value.index("[") + 1 :]:
            # fnmatch would read the '[' literally and match nothing the user meant.
            self.problem(f"{value!r}: '[' opens a glob character class that is never closed by ']'", key)
            return None
        return value

    def number(self, key: str, default: float | None, minimum: float, inclusive: bool) -> float | None:
        """A finite number (YAML text such as '1e-3' included) above ``minimum``; ``default`` when absent."""
        if key not in self.item:
            return default
        value = finite_number(self.item[key])
        if value is None or value < minimum or (value == minimum and not inclusive):
            bound = ">=" if inclusive else ">"
            self.problem(f"expected a finite number {bound} {minimum:g}, got {self.item[key]!r}", key)
            return None
        return value

    def lr_scale(self) -> float:
        """The multiplier every kind of record may set: a finite number > 0, default 1."""
        return self.number("lr_scale", 1.0, 0.0, inclusive=False) or 1.0


@dataclass(frozen=True)
class RecordKind(Generic[T]):
    """How one kind of YAML list reads: each item through ``read``, its keys limited to ``keys``.

    The config loader (freezetune.config.load) reads each list once with it, into the typed
    records the config then holds; the ``parse_*`` functions are the same reading of a whole list."""

    read: Callable[[Fields], T | None]  # builds one record from its Fields, noting problems there
    example: str  # shown when an item is not a mapping ("an event is a mapping like ...")
    keys: tuple[str, ...] | None = None  # the keys a record may have; others are reported with this list

    def read_one(self, item: dict[Any, Any], where: str, problems: list[str]) -> T | None:
        """One mapping named ``where`` (``freeze.rules[2]``) as a record; None, with its problems
        appended to ``problems``, when it has any."""
        fields = Fields(item, where)
        unknown = [str(k) for k in item if self.keys is not None and k not in self.keys]
        if unknown:
            fields.problem(f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(self.keys or ())}")
        record = self.read(fields)
        problems.extend(fields.problems)
        return None if fields.problems else record

    def parse(self, raw: Iterable[object], origin: str) -> tuple[list[T], list[str]]:
        """A whole list, its items named ``origin[i]``; returns (the records without problems,
        one line per problem, each starting ``origin[i]``)."""
        records: list[T] = []
        problems: list[str] = []
        for i, item in enumerate(raw):
            where = f"{origin}[{i}]"
            if not isinstance(item, dict):
                problems.append(f"{where}: {self.example}; got {item!r}")
                continue
            record = self.read_one(item, where, problems)
            if record is not None:
                records.append(record)
        return records, problems


def parse_records(
    raw: Iterable[object],
    origin: str,
    read: Callable[[Fields], T | None],
    example: str,
    keys: tuple[str, ...] | None = None,
) -> tuple[list[T], list[str]]:
    """The loop every list of records shares (:meth:`RecordKind.parse`).

    Args:
        raw: the YAML list.
        origin: its dotted key, e.g. ``freeze.schedule``; records are named ``origin[i]``.
        read: builds one record from its :class:`Fields`, noting problems there.
        example: shown when an item is not a mapping ("an event is a mapping like ...").
        keys: the keys a record may have; others are reported with this list.

    Returns:
        (the records without problems, one line per problem, each starting ``origin[i]``).
    """
    return RecordKind(read, example, keys).parse(raw, origin)


# --------------------------------------------------------------------------- the three kinds


def _read_rule(f: Fields) -> Rule | None:
    if len(f.item) != 1:
        f.problem(f"a rule is a mapping with exactly one key of {', '.join(RULE_KINDS)}; got {f.item!r}")
        return None
    ((kind, _),) = f.item.items()
    if kind not in RULE_KINDS:
        near = difflib.get_close_matches(str(kind), RULE_KINDS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        f.problem(f"unknown rule kind {kind!r}; valid: {', '.join(RULE_KINDS)}{hint}")
        return None
    target = f.name(kind)
    return Rule(kind, target, f.where, source=f.item) if target else None


def _read_event(f: Fields) -> EventSpec | None:
    kinds = [k for k in EVENT_KINDS if k in f.item]
    if len(kinds) != 1:
        f.problem(f"needs exactly one of {', '.join(EVENT_KINDS)}")
    epoch = f.item.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        f.problem(f"expected an integer, got {epoch!r}", "epoch")
    elif epoch < 2:
        f.problem(f"{epoch}: events start at epoch 2 (what holds from epoch 1 is freeze.rules)", "epoch")
    target = f.name(kinds[0]) if len(kinds) == 1 else None
    before = len(f.problems)
    scale = f.lr_scale()
    if "lr_scale" in f.item and kinds in (["freeze"], ["freeze_type"]) and len(f.problems) == before:
        f.problem("only an 'unfreeze' event sets a learning rate", "lr_scale")
    if f.problems or target is None:
        return None
    return EventSpec(epoch, kinds[0], target, scale, f.where, source=f.item)  # type: ignore[arg-type]


def _read_group(f: Fields) -> GroupRule | None:
    match = f.name("match")
    scale = f.lr_scale()
    wd = f.number("weight_decay", None, 0.0, inclusive=True) if f.item.get("weight_decay") is not None else None
    if "lr_scale" not in f.item and "weight_decay" not in f.item:
        f.problem("sets neither lr_scale nor weight_decay")
    return GroupRule(match, scale, wd, f.where, source=f.item) if match else None


# ``freeze.rules``: one-key mappings ``{kind: target}``.
RULES: RecordKind[Rule] = RecordKind(_read_rule, f"a rule is a mapping with exactly one key of {', '.join(RULE_KINDS)}")
# ``freeze.schedule``: ``{epoch: N, unfreeze: P, lr_scale: F}``, ``{epoch: N, freeze: P}``, or the same
# with ``unfreeze_type`` / ``freeze_type`` and a module class name, as in rules.
EVENTS: RecordKind[EventSpec] = RecordKind(
    _read_event, "an event is a mapping like {epoch: 3, unfreeze: layer3}", _EVENT_KEYS
)
# ``train.param_groups``: ``{match: P, lr_scale: F, weight_decay: W}``.
GROUPS: RecordKind[GroupRule] = RecordKind(
    _read_group, "a group is a mapping like {match: layer4, lr_scale: 0.5}", _GROUP_KEYS
)


def parse_rules(raw: Iterable[object], origin: str = "freeze.rules") -> tuple[list[Rule], list[str]]:
    """``freeze.rules``: one-key mappings ``{kind: target}``; returns (rules, problems)."""
    return RULES.parse(raw, origin)


def parse_events(raw: Iterable[object], origin: str = "freeze.schedule") -> tuple[list[EventSpec], list[str]]:
    """``freeze.schedule``: ``{epoch: N, unfreeze: P, lr_scale: F}``, ``{epoch: N, freeze: P}``, or the same
    with ``unfreeze_type`` / ``freeze_type`` and a module class name, as in rules."""
    return EVENTS.parse(raw, origin)


def gradual_events(groups: Iterable[str]) -> list[EventSpec]:
    """ULMFiT (``freeze.preset: gradual``): one group unfrozen per epoch after the first."""
    return [EventSpec(i + 2, "unfreeze", g, 1.0, f"freeze.gradual[{i}]") for i, g in enumerate(groups)]


def parse_param_groups(raw: Iterable[object], origin: str = "train.param_groups") -> tuple[list[GroupRule], list[str]]:
    """``train.param_groups``: ``{match: P, lr_scale: F, weight_decay: W}``; returns (groups, problems)."""
    return GROUPS.parse(raw, origin)
