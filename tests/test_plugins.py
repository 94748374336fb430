"""Plugins: a separately installed package adds a scheme through an entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailqueue import registry
from mailqueue.cli import main
from mailqueue.protocols import OutgoingMessage
from mailqueue.settings import load_settings

PLUGIN = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(scope="module")
def demo_plugin() -> None:
    """pip-install the demo plugin package into this test environment."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            str(PLUGIN),
        ],
        check=True,
    )
    registry.refresh()
    import importlib

    importlib.invalidate_caches()


@pytest.mark.usefixtures("demo_plugin")
async def test_scheme_from_config_url(tmp_path: Path) -> None:
    log = tmp_path / "sent.jsonl"
    config = tmp_path / "mailqueue.yaml"
    config.write_text(f"sender: demo://{log}?from=noreply@example.com\n")
    settings = load_settings(config)
    sender = registry.create_sender(settings.sender.get_secret_value())
    assert type(sender).__module__ == "mailqueue_plugin_demo"
    async with sender:
        result = await sender.send(OutgoingMessage("m1", b"x", "noreply@example.com", ["a@example.com"]))
    assert result.accepted == ["a@example.com"]
    assert json.loads(log.read_text()) == {"id": "m1", "to": ["a@example.com"]}


@pytest.mark.usefixtures("demo_plugin")
def test_plugins_command_names_the_distribution() -> None:
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if " demo " in line)
    assert line.startswith("senders")
    assert "mailqueue_plugin_demo:DemoSender" in line
    assert "(mailqueue-plugin-demo)" in line
    builtin = next(
        line for line in result.output.splitlines() if line.startswith("queues") and " sql " in line
    )
    assert "(mailqueue)" in builtin
