"""Quiet start-up: TensorFlow's native log lines stay off the terminal while it loads.

TF 2.21 writes C++ lines to stderr before Python can configure logging (oneDNN notices,
cudart_stub and cuInit lines on machines without a GPU, "All log messages before
absl::InitializeLog() is called are written to STDERR"), so a bad flag's one-line error
arrived after six lines of noise. The import (and the first device query, which prints the
CUDA lines) runs with file descriptor 2 pointed at a temporary file; if it fails, what TF
wrote is replayed so nothing is hidden. `--verbosity`/`-v` on the command line, or
`KF_VERBOSE_STARTUP=1`, keeps the lines.
"""

import os
import sys
import tempfile


def _wants_native_logs(argv):
    if os.environ.get("KF_VERBOSE_STARTUP") == "1":
        return True
    return any(a == "-v" or a.startswith(("--verbosity", "-v=")) for a in argv[1:])


def import_tensorflow_quietly(argv=None):
    """Imports tensorflow (and lists its devices) with native stderr output captured."""
    if "tensorflow" in sys.modules or _wants_native_logs(argv or sys.argv):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
