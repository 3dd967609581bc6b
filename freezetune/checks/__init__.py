"""Checks: a config checked against the model and the data it names, all problems reported
together, and resolved once (its preprocessing followed from the weights) for the run. Above
freezetune.data and freezetune.models, whose knowledge it asks; below what trains and infers."""

from freezetune.checks.check import as_resolved, check, check_dict, load, resolve

__all__ = ["as_resolved", "check", "check_dict", "load", "resolve"]
