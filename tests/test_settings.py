"""Settings: embedded default, a YAML file, ``MAILQUEUE_*`` variables over it;
errors name the setting; secrets never show."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pydantic
import pytest

from mailqueue.errors import ConfigurationError
from mailqueue.settings import Settings, WorkerSettings, load_settings

SMTP_PASSWORD = "s3cret-Sm7p"
DB_PASSWORD = "db-Pa55w0rd"
TOKEN = "tok-9f8e7d6c5b4a"
SMTP_URL = f"smtp://u:{SMTP_PASSWORD}@host/?from=a@example.com"
STORE_URL = f"mysql+asyncmy://root:{DB_PASSWORD}@127.0.0.1:3306/common_service"

DESIGN_EXAMPLE = f"""\
queue: amqp://guest:guest@127.0.0.1:5672/?queue=mailqueue
store: {STORE_URL}
attachments: file:///var/lib/mailqueue/attachments
sender: smtp://user:{SMTP_PASSWORD}@smtp.example.com:587/?starttls=true&from=noreply@example.com
worker: {{concurrency: 8, rate: "20/s;1000/h", max_attempts: 8, retry_base: 30, retry_max: 3600}}
api: {{host: 127.0.0.1, port: 8100, tokens: [{TOKEN}], max_attachment_bytes: 26214400}}
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILQUEUE_* variable of the outer environment may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("MAILQUEUE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "mailqueue.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_settings(write(tmp_path, text))
    return str(info.value)


# --- the embedded default -------------------------------------------------------------------


def test_embedded_default() -> None:
    settings = load_settings()
    assert settings.queue.get_secret_value() == "sql://"
    assert settings.store.get_secret_value() == "sqlite+aiosqlite:///./mailqueue.db"
    assert settings.attachments.get_secret_value() == "file://./attachments"
    assert settings.sender.get_secret_value() == "outbox://./outbox"
    assert settings.message_id_domain is None
    assert settings.worker == WorkerSettings()
    assert settings.worker.concurrency == 8
    assert settings.worker.rate == ""
    assert settings.worker.max_attempts == 8
    assert (settings.worker.retry_base, settings.worker.retry_max) == (30.0, 3600.0)
    assert settings.worker.missing_attachment == "remark"
    assert (settings.api.host, settings.api.port) == ("127.0.0.1", 8100)
    assert settings.api.tokens == []
    assert settings.log_level == "INFO"


def test_an_empty_file_gives_the_default(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == load_settings()
    assert load_settings(write(tmp_path, "# only a comment\n")) == load_settings()


# --- the YAML file --------------------------------------------------------------------------


def test_file_values(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, DESIGN_EXAMPLE))
    assert settings.queue.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/?queue=mailqueue"
    assert settings.store.get_secret_value() == STORE_URL
    assert settings.attachments.get_secret_value() == "file:///var/lib/mailqueue/attachments"
    assert settings.sender.get_secret_value().startswith(f"smtp://user:{SMTP_PASSWORD}@smtp.example.com:587/")
    assert settings.worker.concurrency == 8
    assert settings.worker.rate == "20/s;1000/h"
    assert (settings.worker.retry_base, settings.worker.retry_max) == (30.0, 3600.0)
    assert [token.get_secret_value() for token in settings.api.tokens] == [TOKEN]
    assert settings.api.max_attachment_bytes == 26214400


def test_file_path_may_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: DEBUG\nmessage_id_domain: mail.example.com\n")
    settings = load_settings(str(path))
    assert settings.log_level == "DEBUG"
    assert settings.message_id_domain == "mail.example.com"


def test_file_partial_worker_keeps_other_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "worker:\n  concurrency: 3\n"))
    assert settings.worker.concurrency == 3
    assert settings.worker.max_attempts == WorkerSettings().max_attempts
    assert settings.queue.get_secret_value() == "sql://"


def test_file_is_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_text("\ufefflog_level: DEBUG\nmessage_id_domain: bücher.example\n", encoding="utf-8")
    settings = load_settings(path)
    assert settings.message_id_domain == "bücher.example"
    assert settings.log_level == "DEBUG"


def test_a_file_does_not_stick_to_later_loads(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "queue: memory://\n")).queue.get_secret_value() == "memory://"
    assert load_settings().queue.get_secret_value() == "sql://"
    assert Settings().queue.get_secret_value() == "sql://"


# --- the environment ------------------------------------------------------------------------


def test_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILQUEUE_QUEUE", "memory://")
    monkeypatch.setenv("MAILQUEUE_WORKER__RATE", "5/s;100/h")
    monkeypatch.setenv("MAILQUEUE_API__PORT", "9100")
    settings = load_settings()
    assert settings.queue.get_secret_value() == "memory://"
    assert settings.worker.rate == "5/s;100/h"
    assert settings.worker.concurrency == 8
    assert settings.api.port == 9100


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "queue: memory://file\nlog_level: DEBUG\n")
    monkeypatch.setenv("MAILQUEUE_QUEUE", "memory://env")
    settings = load_settings(path)
    assert settings.queue.get_secret_value() == "memory://env"
    assert settings.log_level == "DEBUG"


def test_nested_environment_merges_with_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "worker:\n  concurrency: 3\n  rate: 5/s\n  max_attempts: 2\n  retry_base: 7\n")
    monkeypatch.setenv("MAILQUEUE_WORKER__CONCURRENCY", "9")
    worker = load_settings(path).worker
    assert worker.concurrency == 9
    assert (worker.rate, worker.max_attempts, worker.retry_base) == ("5/s", 2, 7.0)


def test_environment_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("mailqueue_worker__concurrency", "4")
    assert load_settings().worker.concurrency == 4


def test_overrides_win_over_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "log_level: DEBUG\nworker:\n  concurrency: 3\n")
    monkeypatch.setenv("MAILQUEUE_LOG_LEVEL", "ERROR")
    settings = load_settings(path, log_level="WARNING", worker={"rate": "1/s"})
    assert settings.log_level == "WARNING"
    assert (settings.worker.rate, settings.worker.concurrency) == ("1/s", 3)


# --- errors ---------------------------------------------------------------------------------


def test_unknown_key_in_the_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, "queue: memory://\nconcurency: 3\n")
    assert "concurency" in message
    assert "worker.retry_bsae" in config_error(tmp_path, "worker:\n  retry_bsae: 3\n")


def test_unknown_nested_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILQUEUE_WORKER__CONCURENCY", "3")
    with pytest.raises(ConfigurationError, match=r"worker\.concurency"):
        load_settings()


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        load_settings(missing)
    assert "nowhere.yaml" in str(info.value)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path)  # a directory is not a config file


@pytest.mark.parametrize("text", ["- queue\n- store\n", "just a string\n", "42\n"])
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    assert "must hold a mapping" in config_error(tmp_path, text)


@pytest.mark.parametrize("text", ["queue: [unclosed\n", "worker: {a: 1\n", "a: b: c\n", "\tqueue: x\n"])
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)
    assert "not valid YAML" in message
    assert "mailqueue.yaml" in message


@pytest.mark.parametrize("rate", ["fast", "20/fortnight", "0/s", "20/s;x"])
def test_invalid_rate_names_worker_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: str) -> None:
    assert "worker.rate" in config_error(tmp_path, f"worker:\n  rate: '{rate}'\n")
    monkeypatch.setenv("MAILQUEUE_WORKER__RATE", rate)
    with pytest.raises(ConfigurationError, match=r"worker\.rate"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("worker: {concurrency: 0}\n", "worker.concurrency"),
        ("worker: {concurrency: many}\n", "worker.concurrency"),
        ("worker: {missing_attachment: ignore}\n", "worker.missing_attachment"),
        ("worker: {retry_base: -1}\n", "worker.retry_base"),
        ("api: {port: 70000}\n", "api.port"),
        ("worker: 8\n", "worker"),
    ],
)
def test_invalid_values_name_the_setting(tmp_path: Path, text: str, named: str) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith("invalid settings:")
    assert f"{named}:" in message


def test_invalid_environment_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILQUEUE_WORKER", "{not json")
    with pytest.raises(ConfigurationError, match="worker"):
        load_settings()


def test_dkim_keys_from_the_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "dkim:\n  - {domain: Bücher.Example., selector: mq2026, key_file: /etc/mq/dkim.pem}\n"
    [key] = load_settings(write(tmp_path, text)).dkim
    assert (key.domain, key.selector, key.key_file, key.algorithm) == (
        "xn--bcher-kva.example",  # as the From domain is rendered
        "mq2026",
        Path("/etc/mq/dkim.pem"),
        "rsa-sha256",
    )
    entries = '[{"domain": "example.com", "selector": "e1", "key_file": "k", "algorithm": "ed25519-sha256"}]'
    monkeypatch.setenv("MAILQUEUE_DKIM", entries)
    assert [(k.domain, k.algorithm) for k in load_settings().dkim] == [("example.com", "ed25519-sha256")]


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        (
            [{"domain": "example.com", "selector": "s", "key_file": "k", "algorithm": "rsa"}],
            "dkim.0.algorithm",
        ),
        ([{"domain": "example.com", "selector": "a_b", "key_file": "k"}], "dkim.0.selector"),
        ([{"domain": "not a domain", "selector": "s", "key_file": "k"}], "dkim.0.domain"),
        ([{"domain": "example.com", "selector": "s"}], "dkim.0.key_file"),
        (
            [
                {"domain": "example.com", "selector": "s1", "key_file": "a"},
                {"domain": "EXAMPLE.com", "selector": "S1", "key_file": "b"},
            ],
            "selector 'S1' of 'example.com' is listed twice",
        ),
    ],
)
def test_invalid_dkim_entries_name_the_setting(entries: list[dict[str, str]], named: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(named)):
        load_settings(dkim=entries)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.log_level = "DEBUG"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.worker.concurrency = 1  # type: ignore[misc]


# --- secrets --------------------------------------------------------------------------------


def _shown(settings: Settings) -> list[str]:
    return [
        str(settings),
        repr(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
        str(settings.model_dump(mode="json")),
        f"{settings}",
        f"{settings.sender} {settings.store!r} {settings.api.tokens}",
    ]


def test_secrets_from_the_environment_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILQUEUE_SENDER", SMTP_URL)
    monkeypatch.setenv("MAILQUEUE_STORE", STORE_URL)
    monkeypatch.setenv("MAILQUEUE_API__TOKENS", f'["{TOKEN}"]')
    settings = load_settings()
    for text in _shown(settings):
        for secret in (SMTP_PASSWORD, DB_PASSWORD, TOKEN):
            assert secret not in text
    assert settings.sender.get_secret_value() == SMTP_URL
    assert settings.store.get_secret_value() == STORE_URL
    assert settings.api.tokens[0].get_secret_value() == TOKEN


def test_secrets_from_the_file_never_show(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, DESIGN_EXAMPLE))
    for text in _shown(settings):
        for secret in (SMTP_PASSWORD, DB_PASSWORD, TOKEN, "guest:guest"):
            assert secret not in text
    assert SMTP_PASSWORD in settings.sender.get_secret_value()


def test_errors_do_not_show_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILQUEUE_SENDER", SMTP_URL)
    monkeypatch.setenv("MAILQUEUE_WORKER__RATE", "bogus")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert SMTP_PASSWORD not in str(info.value)
    monkeypatch.delenv("MAILQUEUE_WORKER__RATE")
    monkeypatch.delenv("MAILQUEUE_SENDER")
    # a secret given in the wrong shape is reported without its value
    message = config_error(tmp_path, f"store: [{STORE_URL}]\nsender: {{url: '{SMTP_URL}'}}\n")
    assert "store:" in message
    assert "sender:" in message
    assert DB_PASSWORD not in message
    assert SMTP_PASSWORD not in message


def test_invalid_yaml_does_not_echo_secrets(tmp_path: Path) -> None:
    message = config_error(tmp_path, f"queue: memory://\nsender: {SMTP_URL}: : [\n")
    assert "not valid YAML" in message
    assert "line 2" in message
    assert SMTP_PASSWORD not in message
