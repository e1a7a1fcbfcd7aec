"""Benchmarks, run by hand (see benchmarks/README.md); they are not tests."""

import sys


def positive_int_flag(argv, name, default):
    """The value of `--name=N` in `argv` (default if absent); exits with one line unless N is
    a positive integer."""
    for arg in argv:
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
            if not value.isdigit() or int(value) < 1:
                sys.exit(f"--{name} must be a positive integer, got {value!r}")
            return int(value)
    return default
