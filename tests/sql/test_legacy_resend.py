"""The README's promise for rows of the original service's ``email`` table: they can be re-sent.

Found from outside: after ``mailqueue db upgrade``, ``mailqueue resend --id
legacy-1`` queued the row, and the worker could not render it (adopted rows
had no Message-ID). Here the whole path runs as a user runs it, on MariaDB,
with the ``mailqueue`` command: the original's table with its rows, the
upgrade, the re-send, a worker process, a real SMTP server, ``show``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import SCRATCH_KINDS
from legacy_db import create_original_table, original_rows, run
from proc_helpers import eventually, mailqueue, parse, run_program

from mailqueue import MailRecord, Status
from mailqueue.sql.store import SQLStore
from mailqueue.testing.smtpd import SMTPTestServer


async def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``mailqueue ARGS`` run to its end, without blocking the test's SMTP server."""
    code, out, err = await run_program(sys.executable, "-m", "mailqueue", *args, cwd=cwd, env=env)
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("scratch_url", [SCRATCH_KINDS[1]], indirect=True)
async def test_a_row_of_the_original_table_is_resent_once_with_a_message_id_of_its_own(
    scratch_url: str, tmp_path: Path
) -> None:
    await create_original_table(scratch_url)
    ids = [row[0] for row in await run(scratch_url, original_rows)]
    legacy = f"legacy-{ids[1]}"  # "Rechnung" to carl@example.com, is_ok = 0

    async def record_of() -> MailRecord | None:
        async with SQLStore(url=scratch_url, migrate=False) as store:
            return await store.get(legacy)

    async with SMTPTestServer() as server:
        env = {
            "MAILQUEUE_STORE": scratch_url,
            "MAILQUEUE_QUEUE": "sql://?poll=0.05",
            "MAILQUEUE_ATTACHMENTS": "sql://",
            "MAILQUEUE_SENDER": server.url(from_address="noreply@example.com", timeout="5"),
        }
        upgraded = await cli(tmp_path, env, "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        before = await cli(tmp_path, env, "show", legacy)
        assert before.returncode == 0, before.stderr
        assert re.search(r"^status:\s+failed$", before.stdout, re.M), before.stdout
        assert "message-id: (none yet" in before.stdout

        resent = await cli(tmp_path, env, "resend", "--id", legacy)
        assert resent.returncode == 0, resent.stderr
        async with mailqueue(tmp_path, "worker", env=env, log=tmp_path / "worker.log") as worker:

            async def sent(attempts: int) -> bool:
                record = await record_of()
                return record is not None and record.status is Status.SENT and record.attempts == attempts

            await eventually(lambda: sent(2), "the re-sent legacy row to be sent", worker)
            await asyncio.sleep(0.5)  # time for a second copy, were one on its way
            assert len(server.messages) == 1
            # asked again, it goes again: with the same Message-ID
            again = await cli(tmp_path, env, "resend", "--id", legacy)
            assert again.returncode == 0, again.stderr
            await eventually(lambda: sent(3), "the second re-send to be sent", worker)
            await worker.stop()

    record = await record_of()
    assert record is not None
    message_id = record.mail.message_id
    assert message_id == f"<{legacy}@example.com>"
    assert len(server.messages) == 2
    for received in server.messages:
        assert received.recipients == ("carl@example.com",)
        message = parse(received.data)
        assert message["Message-ID"] == message_id
        assert message["Subject"] == "Rechnung"
    is_ok = await run(
        scratch_url,
        lambda conn: conn.execute(sa.text("SELECT is_ok FROM email WHERE id = :id"), {"id": ids[1]}).scalar(),
    )
    assert is_ok == 1
    shown = await cli(tmp_path, env, "show", legacy)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^status:\s+sent$", shown.stdout, re.M), shown.stdout
    assert re.search(rf"^message-id:\s+{re.escape(message_id)}$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^attempts:\s+3$", shown.stdout, re.M), shown.stdout
    assert len(re.findall(r"^  attempt \d+ \S+ sent 250", shown.stdout, re.M)) == 2, shown.stdout
