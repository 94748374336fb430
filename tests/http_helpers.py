"""Serve an ASGI app with a real uvicorn server inside the test's event loop.

::

    async with serve(app) as client:          # httpx.AsyncClient on http://127.0.0.1:<port>
        response = await client.get("/health/live")

The server listens on a socket bound to a free loopback port before it
starts, runs the app's lifespan, and is shut down gracefully (lifespan
shutdown included) when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn

__all__ = ["serve"]

STARTUP_TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def serve(app: Any, *, client_timeout: float = 10.0) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app`` under uvicorn on 127.0.0.1 and yield a client for it.

    Raises:
        RuntimeError: the server did not start (e.g. the app's lifespan startup failed).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=10,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STARTUP_TIMEOUT
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started (did the lifespan startup fail?)")
                if loop.time() > deadline:
                    raise RuntimeError("uvicorn did not start in time")
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=client_timeout
            ) as client:
                yield client
        finally:
            server.should_exit = True
            await task
    finally:
        sock.close()
