"""The mailqueue HTTP service: a thin Litestar app over mailqueue's public API.

::

    from mailqueue import load_settings
    from mailqueue.contrib.litestar_app import check_bind_allowed, create_app

    settings = load_settings()
    check_bind_allowed(settings.api.host, settings)
    app = create_app(settings, worker=True)   # API and worker in one process

Needs ``pip install 'mailqueue[litestar]'``.
"""

from __future__ import annotations

from mailqueue.contrib.litestar_app.app import create_app
from mailqueue.contrib.litestar_app.auth import check_bind_allowed
from mailqueue.contrib.litestar_app.plugin import MailQueuePlugin

__all__ = ["MailQueuePlugin", "check_bind_allowed", "create_app"]
