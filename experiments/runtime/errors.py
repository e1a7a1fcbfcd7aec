"""Errors the runtime turns into a one-line message and exit code 2."""


class ConfigError(Exception):
    """Bad user input: a flag, a file, a dataset or an environment (TF_CONFIG) that cannot work.

    The experiment launcher prints `<experiment>: error: <message>` and exits with code 2.
    """
