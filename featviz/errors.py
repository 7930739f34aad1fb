"""Typed errors. Every user mistake raises a FeatvizError whose message fits on one line;
the CLI prints it without a traceback and exits non-zero."""

from __future__ import annotations


class FeatvizError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class DataError(FeatvizError):
    """A data set that cannot be found, read or understood."""


class ConfigError(FeatvizError):
    """An option or configuration value that is out of range or inconsistent."""


class RunError(FeatvizError):
    """A run directory that is missing, not a run, damaged, or already exists."""


class TrainingDiverged(FeatvizError):
    """Training met a non-finite loss; the last good snapshot is kept."""


def one_line(err: BaseException | str, limit: int | None = None) -> str:
    """An exception (or text) as one line: whitespace collapsed, cut at ``limit`` characters if given;
    an exception without a message gives its type's name."""
    text = " ".join(str(err).split())
    if not text and isinstance(err, BaseException):
        text = type(err).__name__
    return text[:limit] if limit else text
