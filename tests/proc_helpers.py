"""Running programs from tests: a clean environment and a non-blocking run."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path


def clean_env(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The outer environment without any MAILQUEUE_* variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILQUEUE_")}
    env.update(settings or {})
    return env


async def run_program(*argv: str, cwd: Path, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run a program to its end (60 s at most) without blocking the event loop.

    Returns:
        exit code, stdout, stderr.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=clean_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
