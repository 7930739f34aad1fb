"""Value checks shared by the configs and by ``featviz.optvis`` (which takes no config of featviz's, so
it works on any model without the rest of the package)."""

from __future__ import annotations

import numbers


def is_int(v: object) -> bool:
    """An integer (Python, NumPy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
