"""keep_freed_memory: megabyte-sized blocks come from the reusable heap, not fresh mmaps.

mallopt settings are process-wide and depend on what ran before (other tests, thread arenas),
so each measurement runs in a fresh interpreter that loads only
`experiments/runtime/memory.py` and NumPy. The effect is read from glibc's `mallinfo2`:
`hblkhd` is the memory currently held in mmap'ed blocks, which glibc gives back to the OS on
free (and which then faults in again, zero-filled, on the next allocation).
"""

import ctypes
import ctypes.util
import json
import pathlib
import subprocess
import sys

import pytest

MEMORY_PY = pathlib.Path(__file__).parents[2] / "experiments" / "runtime" / "memory.py"

PROGRAM = """
import ctypes, importlib.util, json, sys
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
spec = importlib.util.spec_from_file_location("memory", sys.argv[1])
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)
applied = (memory.keep_freed_memory(), memory.keep_freed_memory()) if sys.argv[2] == "1" else None
before = libc.mallinfo2().hblkhd
block = np.ones(24 * 2**20 // 8)  # 24 MB: above glibc's default 128 kB mmap threshold
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblkhd - before}))
"""


def _run(keep):
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(MEMORY_PY), "1" if keep else "0"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _has_mallinfo2():
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(),
                    reason="needs glibc >= 2.33 (mallopt, mallinfo2)")
def test_large_blocks_come_from_the_heap_not_from_mmap():
    default, kept = _run(keep=False), _run(keep=True)
    assert default["mmapped"] >= 24 * 2**20  # glibc's default: a fresh mmap for the block
    assert kept["applied"] == [True, True]  # applied, and idempotent
    assert kept["mmapped"] == 0  # from the heap, where freed blocks are kept for reuse
