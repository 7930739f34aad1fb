"""Checks of values read from a run's JSON files, for ``featviz.run.schema``'s ``from_json``: each says
whether a value has the type a stage relies on, so a damaged or edited file is one ``SchemaError`` naming
the field, never a TypeError later in whichever stage reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from featviz.errors import RunError

MAX_COUNT = 2**53  # the largest epoch, step or channel a record may hold (exact as a float and in JavaScript)


class SchemaError(RunError):
    """A run file whose content does not have the shape its type needs (edited, damaged, or not featviz's)."""


def whole(v: Any, low: int = 0) -> bool:
    """``v`` is an int (not a bool) from ``low`` to ``MAX_COUNT``."""
    return type(v) is int and low <= v <= MAX_COUNT


def are_numbers(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def is_text(v: Any) -> bool:
    return isinstance(v, str)


def or_none(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def checked(what: str, d: Any, types: Mapping[str, Callable[[Any], bool]], required: tuple[str, ...]) -> dict:
    """``d`` if it is a dict whose ``required`` keys are present and whose keys in ``types`` pass their
    check; else a SchemaError naming ``what`` and the first key that does not."""
    if not isinstance(d, dict):
        raise SchemaError(f"{what} is not an object")
    bad = next((k for k in required if k not in d), None) or next(
        (k for k, ok in types.items() if k in d and not ok(d[k])), None
    )
    if bad is not None:
        raise SchemaError(f"{what}: {bad} is missing or of the wrong type")
    return d


def fields_of(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The items of ``d`` that are fields of the dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}
