"""Atomic file writes: a reader never sees a half-written results.json or history.json."""

import json
import os


def write_json(path, obj):
    """Writes `obj` as indented, key-sorted JSON to `path` via a rename (atomic on POSIX)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_text(path, text):
    """Writes `text` to `path` via a rename (atomic on POSIX)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
