"""``mailqueue suppress``: add, remove, list, import (all-or-nothing), export."""

from __future__ import annotations

import asyncio
import csv
import io
import os
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailqueue import MailQueue, SuppressionQuery
from mailqueue.cli import main
from mailqueue.records import utcnow


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MAILQUEUE_")}
    return {**unset, "MAILQUEUE_STORE": f"sqlite+aiosqlite:///{tmp_path / 'mq.db'}"}


def run(env: dict[str, str | None], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["suppress", *args], env=env, input=stdin, catch_exceptions=False)


def entries(env: dict[str, str | None]) -> dict[str, str]:
    async def go() -> dict[str, str]:
        mq = MailQueue.from_urls(
            store=str(env["MAILQUEUE_STORE"]), queue="memory://", attachments="memory://"
        )
        async with mq.store:
            found = await mq.suppressions.list(SuppressionQuery(limit=1000))
        return {e.address: e.reason.value for e in found}

    return asyncio.run(go())


def test_add_list_remove(env: dict[str, str | None]) -> None:
    added = run(env, "add", "Ann@Example.com", "--reason", "unsubscribe", "--for", "30d")
    assert added.exit_code == 0, added.output
    assert "suppressed ann@example.com (unsubscribe) until 20" in added.stdout
    assert run(env, "add", "bob@example.org").exit_code == 0
    listed = run(env, "list")
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        ["bob@example.org", "manual"],
        ["ann@example.com", "unsubscribe"],
    ]
    assert "2 of 2 entries" in listed.stderr
    only = run(env, "list", "--address", "EXAMPLE.COM")
    assert [line.split("\t")[0] for line in only.stdout.splitlines()] == ["ann@example.com"]
    only = run(env, "list", "--reason", "manual")
    assert [line.split("\t")[0] for line in only.stdout.splitlines()] == ["bob@example.org"]

    removed = run(env, "remove", "ANN@example.com")
    assert removed.exit_code == 0
    assert "removed ann@example.com" in removed.stdout
    again = run(env, "remove", "ann@example.com")
    assert again.exit_code == 1
    assert "not on the suppression list" in again.stderr
    assert entries(env) == {"bob@example.org": "manual"}


@pytest.mark.parametrize(
    "args",
    [
        ["add", "not-an-address"],
        ["add", "a@example.com\r\nBcc: b@example.com"],
        ["add", "a@example.com", "--reason", "bounced"],
        ["add", "a@example.com", "--expires-at", "yesterday"],
        ["add", "a@example.com", "--expires-at", "2001-01-01T00:00:00"],
        ["add", "a@example.com", "--for", "1d", "--expires-at", "2099-01-01"],
        ["remove", "a@example.com\n"],
    ],
)
def test_bad_input_is_refused_and_changes_nothing(env: dict[str, str | None], args: list[str]) -> None:
    result = run(env, *args)
    assert result.exit_code == 2, result.output
    assert entries(env) == {}


def test_import_then_export_round_trips(env: dict[str, str | None], tmp_path: Path) -> None:
    later = (utcnow() + timedelta(days=3)).isoformat()
    run(env, "add", "old@example.com", "--reason", "complaint")
    data = tmp_path / "list.csv"
    data.write_text(
        "address,reason,expires_at\n"
        "A@example.com,hard_bounce,\n"
        f"b@example.com,,{later}\n"
        "old@example.com,unsubscribe,\n"
        "a@example.com,complaint,\n"
    )
    done = run(env, "import", str(data))
    assert done.exit_code == 0, done.output
    assert (
        "imported 3 address(es) from 4 row(s): 2 new, 1 already suppressed (replaced), 1 repeated"
        in done.stdout
    )
    assert entries(env) == {
        "a@example.com": "complaint",
        "b@example.com": "manual",
        "old@example.com": "unsubscribe",
    }

    exported = run(env, "export")
    assert exported.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert sorted((r["address"], r["reason"], bool(r["expires_at"])) for r in rows) == [
        ("a@example.com", "complaint", False),
        ("b@example.com", "manual", True),
        ("old@example.com", "unsubscribe", False),
    ]
    assert "exported 3 entries" in exported.stderr
    # an export imports again, elsewhere, unchanged
    other = {**env, "MAILQUEUE_STORE": f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"}
    again = run(other, "import", "-", stdin=exported.stdout)
    assert again.exit_code == 0, again.output
    assert entries(other) == entries(env)


def test_a_bad_row_imports_nothing_and_names_its_line(env: dict[str, str | None], tmp_path: Path) -> None:
    data = tmp_path / "list.csv"
    data.write_text(
        "address,reason,expires_at\n"
        "good@example.com,manual,\n"
        "bad\r\n"
        "x@example.com,bounced,\n"
        "y@example.com,manual,next week\n"
        "z@example.com,manual,2001-01-01T00:00:00Z\n"
    )
    result = run(env, "import", str(data))
    assert result.exit_code == 1
    assert "line 3: address:" in result.stderr
    assert "line 4: reason: must be one of" in result.stderr
    assert "line 5: expires_at: 'next week' is not an ISO 8601 time" in result.stderr
    assert "line 6: expires_at:" in result.stderr
    assert "4 bad row(s) of 5: nothing imported" in result.stderr
    assert entries(env) == {}


def test_a_file_without_an_address_column_is_refused(env: dict[str, str | None], tmp_path: Path) -> None:
    data = tmp_path / "list.csv"
    data.write_text("email,reason\na@example.com,manual\n")
    result = run(env, "import", str(data))
    assert result.exit_code == 1
    assert "must name an 'address' column" in result.stderr
    assert entries(env) == {}


def test_dry_run_imports_nothing(env: dict[str, str | None]) -> None:
    result = run(env, "import", "--dry-run", "-", stdin="address\na@example.com\n")
    assert result.exit_code == 0
    assert "would import 1 address(es)" in result.stdout
    assert entries(env) == {}
