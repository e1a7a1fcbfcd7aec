"""Atomic, strict-JSON file writes: a reader never sees a half-written results.json.

JSON (RFC 8259) has no NaN or Infinity; `json.dump` would write them as bare tokens that
`JSON.parse` and other strict readers reject. A non-finite number becomes `null`, with the
reason next to it: `"<key>_nonfinite": "nan"` beside a dict entry, and for list items
`"<key>_nonfinite": {"<index>": "nan"}` beside the list.
"""

import json
import math
import os


def _reason(value):
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _nonfinite(value):
    return isinstance(value, float) and not math.isfinite(value)


def strict(obj):
    """A copy of `obj` with NaN/Inf floats replaced by null plus a sibling reason."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if _nonfinite(value):
                out[key] = None
                out[f"{key}_nonfinite"] = _reason(value)
            elif isinstance(value, (list, tuple)) and any(_nonfinite(v) for v in value):
                out[key] = [None if _nonfinite(v) else strict(v) for v in value]
                out[f"{key}_nonfinite"] = {str(i): _reason(v) for i, v in enumerate(value)
                                           if _nonfinite(v)}
            else:
                out[key] = strict(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [None if _nonfinite(v) else strict(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # NumPy scalars
        try:
            return strict(obj.item())
        except (TypeError, ValueError):
            return obj
    return None if _nonfinite(obj) else obj


def write_json(path, obj):
    """Writes `obj` as indented, key-sorted strict JSON to `path` via an atomic rename."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(strict(obj), f, indent=2, sort_keys=True, default=str, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def write_text(path, text):
    """Writes `text` to `path` via a rename (atomic on POSIX)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
