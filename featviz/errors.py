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
