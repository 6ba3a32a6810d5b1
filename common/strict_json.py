"""Strict JSON, the only JSON the project writes (summaries, metrics rows, sweep and benchmark tables, records):
no NaN or Infinity, which Python's json module writes by default but jq, JavaScript and most JSON libraries
reject. A non-finite number becomes null, and its containing object gets the reason beside it:

    {"step_avg_ms": NaN}                  ->  {"step_avg_ms": null, "nonfinite": {"step_avg_ms": "nan"}}
    {"losses": [2.1, Infinity]}           ->  {"losses": [2.1, null], "nonfinite": {"losses[1]": "inf"}}

(a "nonfinite" key already present is kept and extended). `loads` reads the files back, strictly as well.
"""

from __future__ import annotations

import json
import math

NONFINITE = "nonfinite"


def _reason(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def to_strict(obj, _notes: dict | None = None, _path: str = ""):
    """A copy of obj with every non-finite float replaced by None, the reasons recorded as above."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if _notes is not None:
            _notes[_path] = _reason(obj)
        return None
    if isinstance(obj, dict):
        notes: dict = {}
        out = {k: to_strict(v, notes, str(k)) for k, v in obj.items()}
        if notes:
            out[NONFINITE] = {**(out.get(NONFINITE) or {}), **notes}
        return out
    if isinstance(obj, (list, tuple)):
        return [to_strict(v, _notes, f"{_path}[{i}]") for i, v in enumerate(obj)]
    return obj


def dumps(obj, indent: int | None = None, **kwargs) -> str:
    """json.dumps of to_strict(obj), refusing anything that would still not be strict JSON."""
    return json.dumps(to_strict(obj), indent=indent, allow_nan=False, **kwargs)


def _refuse(token: str):
    raise ValueError(f"not strict JSON: {token}")


def loads(text: str):
    """json.loads that refuses NaN and Infinity (as strict parsers do)."""
    return json.loads(text, parse_constant=_refuse)
