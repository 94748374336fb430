"""The registry: lazy loading by scheme, helpful errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailqueue import registry
from mailqueue.backends.memory import MemoryQueue, MemorySender
from mailqueue.backends.outbox import OutboxSender
from mailqueue.errors import ConfigurationError, MissingDependencyError, UnknownSchemeError
from mailqueue.protocols import AttachmentStore, BackendContext, BackendFactory, Queue, Sender, Store
from mailqueue.stores.disk import FileAttachmentStore
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore


def test_builtins_register_through_entry_points() -> None:
    schemes = {(b.group, b.scheme) for b in registry.available()}
    for expected in [
        ("mailqueue.queues", "memory"),
        ("mailqueue.queues", "sql"),
        ("mailqueue.senders", "smtp"),
        ("mailqueue.senders", "smtps"),
        ("mailqueue.senders", "outbox"),
        ("mailqueue.stores", "sqlite+aiosqlite"),
        ("mailqueue.stores", "mysql+asyncmy"),
        ("mailqueue.stores", "postgresql+asyncpg"),
        ("mailqueue.stores", "memory"),
        ("mailqueue.attachment_stores", "file"),
        ("mailqueue.attachment_stores", "sql"),
        ("mailqueue.attachment_stores", "memory"),
    ]:
        assert expected in schemes


def test_every_registered_backend_is_a_factory() -> None:
    for info in registry.available():
        factory = registry.load(info.group, info.scheme)
        if info.group == "mailqueue.sending_steps":  # not a backend: a StepFactory (inner, settings)
            assert callable(factory), info
        else:
            assert isinstance(factory, BackendFactory), info


def test_backend_classes_are_typed_factories() -> None:
    # Checked by mypy: each class is a BackendFactory of its protocol.
    queues: BackendFactory[Queue] = MemoryQueue
    senders: list[BackendFactory[Sender]] = [MemorySender, OutboxSender]
    stores: BackendFactory[Store] = MemoryStore
    attachments: list[BackendFactory[AttachmentStore]] = [MemoryAttachmentStore, FileAttachmentStore]
    context = BackendContext()
    assert isinstance(queues.from_url("memory://", context=context), Queue)
    assert all(isinstance(s.from_url("outbox://./x", context=context), Sender) for s in senders[1:])
    assert isinstance(stores.from_url("memory://", context=context), Store)
    assert isinstance(attachments[0].from_url("memory://", context=context), AttachmentStore)


def test_unknown_scheme_suggests_the_closest() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        registry.create_queue("sqll://")
    assert info.value.suggestion == "sql"
    assert "did you mean 'sql'?" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_url_without_scheme() -> None:
    with pytest.raises(ConfigurationError, match="needs a scheme"):
        registry.create_store("/var/lib/mail.db")


def test_redact_url_hides_the_password() -> None:
    assert (
        registry.redact_url("smtp://user:s3cret@host:587/?from=a@b.c")
        == "smtp://user:***@host:587/?from=a@b.c"
    )


def test_missing_extra_names_the_pip_command() -> None:
    error = MissingDependencyError("aio_pika", "rabbitmq")
    assert "pip install 'mailqueue[rabbitmq]'" in str(error)
    assert isinstance(error, ImportError)


def test_importing_mailqueue_imports_no_driver() -> None:
    code = (
        "import sys, mailqueue, mailqueue.cli, mailqueue.registry;"
        "bad = [m for m in ('asyncmy', 'asyncpg', 'aio_pika', 'aiokafka', 'litestar', 'aiosmtpd')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_backend_loaded_lazily_and_cached() -> None:
    code = (
        "import sys; from mailqueue import registry;"
        "assert 'mailqueue.sql' not in sys.modules;"
        "registry.create_queue('memory://');"
        "assert 'mailqueue.sql' not in sys.modules, 'memory pulled in sql';"
        "a = registry.load('mailqueue.queues', 'memory');"
        "assert a is registry.load('mailqueue.queues', 'memory')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
