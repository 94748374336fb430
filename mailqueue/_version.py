"""The version of mailqueue: the one place it is written.

The build reads it from here (``[tool.hatch.version]`` in ``pyproject.toml``),
so the wheel's metadata, ``mailqueue.__version__`` and ``mailqueue --version``
cannot disagree, and a checkout that is not installed knows its version too.
Bump it when cutting a release (docs/releasing.md).
"""

__version__ = "0.1.0"
