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


@pytest.mark.usefixtures("demo_plugin")
async def test_a_sending_step_from_an_entry_point_wraps_the_chain() -> None:
    from mailqueue.backends.memory import MemorySender
    from mailqueue.errors import ConfigurationError
    from mailqueue.sending.pipeline import build_sender, links

    settings = load_settings(
        sender="memory://?from=a@example.com", message_id_domain="tags.example", sending_steps=["demo-tag"]
    )
    chain = build_sender(settings)
    step, _limit, wire = list(links(chain.sender))  # outermost: the plugin's step
    assert type(step).__name__ == "TagStep"
    assert isinstance(wire, MemorySender)
    async with chain.sender:
        result = await chain.sender.send(
            OutgoingMessage("m1", b"Subject: s\r\n\r\nx\r\n", "a@example.com", ["b@example.com"])
        )
    assert result.accepted == ["b@example.com"]
    assert [m.data for m in wire.sent] == [b"X-Demo-Tag: tags.example\r\nSubject: s\r\n\r\nx\r\n"]

    with pytest.raises(
        ConfigurationError, match=r"no sending step named 'demo-tga'; did you mean 'demo-tag'"
    ):
        build_sender(load_settings(sender="memory://", sending_steps=["demo-tga"]))
    listed = CliRunner().invoke(main, ["plugins"]).output
    assert any(
        line.startswith("sending_steps") and "mailqueue_plugin_demo:TagStep" in line
        for line in listed.splitlines()
    )
