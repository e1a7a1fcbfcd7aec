"""keep_freed_memory: freed megabyte-sized blocks are reused instead of re-faulted."""

import resource
import sys

import numpy as np
import pytest

from experiments.runtime import keep_freed_memory


def _minor_faults(rounds=20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        for megabytes in (3, 12):  # under and over glibc's default 128 kB..32 MB threshold
            block = np.empty(megabytes * 2**20 // 8)
            block[:] = 1.0
            del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
    _minor_faults(2)  # the heap grows once
    pages_touched = 20 * 15 * 2**20 // 4096
    assert _minor_faults() < 0.02 * pages_touched
