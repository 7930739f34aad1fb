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


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (ESC sequences that clear the screen or set the
    title, carriage returns, bidirectional overrides) become visible escapes such as ``\\x1b``, so a
    name read from a file is shown, never obeyed. Newlines and tabs stay."""
    return "".join(
        c
        if c in "\n\t" or (c.isprintable() and not 0x202A <= ord(c) <= 0x202E and not 0x2066 <= ord(c) <= 0x2069)
        else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text
    )


LINE_LIMIT = 1000  # characters of one error line; a value echoed in full (a huge JSON option) is cut


def error_line(err: BaseException | str) -> str:
    """An error as the CLI prints it: one line, terminal-safe, at most ``LINE_LIMIT`` characters."""
    text = printable(one_line(err))
    return text if len(text) <= LINE_LIMIT else text[: LINE_LIMIT - 1] + "…"
