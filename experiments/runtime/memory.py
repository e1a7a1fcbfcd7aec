"""Keep freed memory in the process instead of handing it back to the OS (glibc malloc).

By default glibc serves large blocks (above a threshold that grows to at most 32 MB) with
mmap and returns them with munmap, and trims the heap top when more than twice that is free.
A training loop that allocates and frees the same few megabyte-sized buffers every step
(gathered embedding rows, their gradients) then takes fresh zero-filled pages on every step:
on the 2-core dev box, word2vec's quick run took 2.5M minor page faults and a third of its CPU
time in the kernel. `keep_freed_memory` raises the mmap threshold to its maximum and turns
trimming off, so freed blocks are reused; the resident size stays at its peak instead.
Results are unchanged (only where memory comes from). A no-op where glibc is not the C library.
Call it before TensorFlow starts its thread pools (at import, before the first op or
strategy): called after, the pools' threads kept churning (word2vec through `run_local`: 3.55M
page faults called late vs 0.22M called at import).
"""

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_done = False


def keep_freed_memory():
    """Sets glibc's mallopt so freed large blocks are reused. Returns whether it applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, 2**31 - 1),
        (_M_TOP_PAD, 64 * 1024 * 1024)))
    _done = ok
    return ok
