"""The container files read as the service reads them: ``deploy/compose.yaml`` with its
environment files gives every mailqueue service valid settings whose backends build and
whose passwords match the database's and the broker's, the start order and health checks
hold together, and the ``Containerfile`` runs what the documentation says.

Nothing is built or started here (no container engine is needed): ``scripts/container-check``
builds the image and runs the stack with podman.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click
import pytest
import yaml

from mailqueue import MailQueue, registry
from mailqueue.cli import main as cli_main
from mailqueue.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MAILQUEUE_SERVICES = ("migrate", "api", "worker")


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def env_file(name: str) -> dict[str, str]:
    """An environment file as compose reads it: ``NAME=value`` lines, ``#`` comments."""
    values = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name_, sep, value = line.partition("=")
        assert sep, f"{name}: not NAME=value: {line!r}"
        assert not value.startswith(("'", '"')), f"{name}: quotes differ between compose tools: {line!r}"
        values[name_] = value
    return values


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in service.get("env_file", []):
        values.update(env_file(name))
    values.update({k: str(v) for k, v in service.get("environment", {}).items()})
    return values


def service_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("MAILQUEUE_"):
            monkeypatch.delenv(key)
    for key, value in service_environment(service).items():
        monkeypatch.setenv(key, value)
    return load_settings()


def check_command(argv: list[str]) -> None:
    """``argv`` names a mailqueue command with options it has."""
    assert argv[0] == "mailqueue"
    command: click.Command = cli_main
    words = argv[1:]
    while isinstance(command, click.Group):
        command = command.commands[words.pop(0)]
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert [w for w in words if w.startswith("-") and w not in known] == []


@pytest.mark.parametrize("name", MAILQUEUE_SERVICES)
def test_every_mailqueue_service_has_settings_that_build(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    service = services[name]
    settings = service_settings(service, monkeypatch)
    # every URL names a backend that exists, with options it knows (nothing is connected)
    MailQueue.from_settings(settings)
    registry.create_sender(settings.sender.get_secret_value())
    check_command(service["command"])
    # the API and the worker run in different containers: attachments in the database
    assert settings.attachments.get_secret_value() == "sql://"
    # every host a URL names is a service of the stack
    for url in (settings.store, settings.queue):
        assert urlsplit(url.get_secret_value()).hostname in services
    if name == "api":
        assert service["command"][service["command"].index("--host") + 1] == "0.0.0.0"
        assert settings.api.tokens, "on 0.0.0.0 the API needs a token"
        assert service["ports"] == ["${MAILQUEUE_PUBLISH:-127.0.0.1:8100}:8100"]


def test_passwords_agree_between_the_environment_files(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = service_settings(compose()["services"]["api"], monkeypatch)
    store = urlsplit(settings.store.get_secret_value())
    mariadb = env_file("compose.mariadb.env")
    assert (store.username, unquote(store.password or ""), store.path.lstrip("/")) == (
        mariadb["MARIADB_USER"],
        mariadb["MARIADB_PASSWORD"],
        mariadb["MARIADB_DATABASE"],
    )
    queue = urlsplit(settings.queue.get_secret_value())
    rabbitmq = env_file("compose.rabbitmq.env")
    assert (queue.username, unquote(queue.password or "")) == (
        rabbitmq["RABBITMQ_DEFAULT_USER"],
        rabbitmq["RABBITMQ_DEFAULT_PASS"],
    )
    # placeholders only: nobody mistakes them for a configured secret
    secrets = [
        mariadb["MARIADB_PASSWORD"],
        mariadb["MARIADB_ROOT_PASSWORD"],
        rabbitmq["RABBITMQ_DEFAULT_PASS"],
        *(t.get_secret_value() for t in settings.api.tokens),
    ]
    assert all(s.startswith("change-me") for s in secrets)


def test_start_order_and_health_checks() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["mailqueue", "db", "upgrade"]
    assert services["migrate"]["depends_on"] == {"mariadb": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            if how["condition"] == "service_healthy":
                assert "test" in services[dependency]["healthcheck"], (name, dependency)
    # only the API is published; the database and the broker stay inside the stack
    assert [name for name, s in services.items() if "ports" in s] == ["api"]


def test_the_worker_health_check_asks_its_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = compose()["services"]["worker"]
    settings = service_settings(worker, monkeypatch)
    assert settings.worker.metrics_port != 0
    assert settings.worker.metrics_host == "0.0.0.0"
    assert settings.worker.rate_store == "redis://redis:6379/0"
    test = " ".join(worker["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.worker.metrics_port}/health/live" in test
    # SIGTERM lets sends in flight finish before the engine kills the container
    assert float(worker["stop_grace_period"].rstrip("s")) > settings.worker.shutdown_timeout


def containerfile() -> dict[str, list[str]]:
    """The Containerfile's instructions by keyword (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Containerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword, []).append(rest.strip())
    return found


def test_the_containerfile_runs_the_embedded_default_as_a_user_on_a_volume() -> None:
    image = containerfile()
    defaults = Settings()
    assert image["EXPOSE"] == [str(defaults.api.port)]
    assert image["USER"] == ["mailqueue"]
    assert image["WORKDIR"] == image["VOLUME"][0].strip('[]"').split() == ["/data"]
    # the embedded default keeps everything under the working directory, so under the volume
    for url in (defaults.store, defaults.attachments, defaults.sender):
        assert "./" in url.get_secret_value()
    cmd = yaml.safe_load(image["CMD"][0])
    assert cmd == ["mailqueue", "serve", "--host", "0.0.0.0"]
    check_command(cmd)
    assert f"127.0.0.1:{defaults.api.port}/health/live" in image["HEALTHCHECK"][0]
    args = {a.partition("=")[0]: a.partition("=")[2] for a in image["ARG"]}
    assert args["BASE"] == "python:3.12-slim"
    assert args["PIP_CERT"] == ""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"\n{args['EXTRAS']} = " in pyproject
