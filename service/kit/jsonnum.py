"""One JSON spelling of non-finite numbers, used everywhere trainlab writes JSON.

JSON has no NaN or infinity. trainlab writes them as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"``: the spellings JavaScript's ``Number()`` and
Python's ``float()`` both read back, and the ones PostgreSQL's JSON accepts as strings.
This holds for API responses (statistics, metrics, results, evidence), for 422 errors
that echo an input (``1e400`` parses to infinity), and for what is stored in JSON
columns. (A NaN stored in a SQLite float column reads back as null.)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

NAN = "NaN"
POS_INF = "Infinity"
NEG_INF = "-Infinity"


def json_number(value: float | None) -> float | str | None:
    """A float as JSON can carry it: finite floats as they are, the rest as strings."""
    if value is None or math.isfinite(value):
        return value
    return nonfinite_name(value)


def nonfinite_name(value: float) -> str:
    """The spelling of NaN, +inf or -inf."""
    if math.isnan(value):
        return NAN
    return POS_INF if value > 0 else NEG_INF


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float, also inside dicts and lists, spelled as
    above; numpy scalars become Python numbers. Other values pass through unchanged."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers are not JSON serializable
        return int(value)
    if isinstance(value, numbers.Real):
        return json_number(float(value))
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
