"""The ``mailqueue`` command.

Every command takes ``--config FILE`` (or ``MAILQUEUE_CONFIG``); settings
then come from that YAML file and ``MAILQUEUE_*`` environment variables.
Exit codes: 0 success, 1 an operation failed, 2 bad usage or configuration.

``serve`` (API and worker in one process) and ``api`` (the API alone) run
the Litestar app of :mod:`mailqueue.contrib.litestar_app` under uvicorn
(uvloop and httptools when installed); :func:`asgi_app` is the same app as
a factory for any ASGI server (``uvicorn --factory mailqueue.cli:asgi_app``).

The group and what the commands share are in :mod:`mailqueue.cli._common`;
the commands are in :mod:`~mailqueue.cli.serve` (``worker``, ``serve``,
``api``), :mod:`~mailqueue.cli.operations` (``send``, ``show``, ``resend``,
``sweep``, ``prune``, ``plugins``), :mod:`~mailqueue.cli.status`,
:mod:`~mailqueue.cli.bounces`, :mod:`~mailqueue.cli.suppress` (the suppression list) and
:mod:`~mailqueue.cli.db`. Importing them here registers their commands on :func:`main`;
they import ``_common``, never this package.
"""

from __future__ import annotations

# importing the command modules registers their commands on `main`
from mailqueue.cli import bounces, db, operations, serve, status, suppress  # noqa: F401
from mailqueue.cli._common import _configure_logging as _configure_logging
from mailqueue.cli._common import main
from mailqueue.cli.serve import _bind as _bind
from mailqueue.cli.serve import _serve_in_process as _serve_in_process
from mailqueue.cli.serve import _uvicorn_options as _uvicorn_options
from mailqueue.cli.serve import asgi_app
from mailqueue.cli.serve import run_worker as run_worker

__all__ = ["asgi_app", "main"]
