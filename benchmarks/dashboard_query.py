"""The operator dashboard's queries on a million mails in MariaDB, through the real SQLStore.

Fills a database of its own (``mq_bench_dash`` by default; dropped at the end
unless ``--keep``) through mailqueue's migrations, so that the schema and its
indexes are the real ones, with realistic rows written by multi-row INSERTs:
spread over 30 days, ~93 % sent, some failed/dead/unknown, queued, sending and
retrying ones in the last hours, reply codes 250/421/450/550/553/554, a few
soft-deleted, attempt rows for the mails that needed more than one try. Then
times each query the dashboard makes (median and max of ``--runs`` runs, the
first, cold one included) and prints a table and a JSON line; the result goes
to ``benchmarks/results/dashboard_query.json``. ``--explain`` prints MariaDB's
plan of every statement the store ran.

    .venv/bin/python benchmarks/dashboard_query.py [--rows 1000000] [--runs 7] [--keep] [--reuse] [--explain]
        [--url mysql+asyncmy://root@127.0.0.1:3306/mq_bench_dash]

``--reuse`` keeps a database that already holds ``--rows`` rows instead of
filling it again (for repeated runs with ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from mailqueue.message import Mail, Recipient
from mailqueue.records import RecordQuery, Status
from mailqueue.sql import schema
from mailqueue.sql.engine import make_engine
from mailqueue.sql.migrate import upgrade
from mailqueue.sql.store import SQLStore

DEFAULT_URL = "mysql+asyncmy://root@127.0.0.1:3306/mq_bench_dash"
RESULTS = Path(__file__).parent / "results" / "dashboard_query.json"
DAYS = 30
BATCH = 2000
PAGE = 50
#: Planted once each, to time a substring search that finds (almost) nothing.
RARE_ADDRESS = "zelda.quimby@rare-domain.example"
RARE_SUBJECT = "Refund 9f3c-unique"

FIRST = ["anna", "ben", "carla", "david", "emma", "felix", "greta", "hugo", "ines", "jonas", "lena", "max"]
LAST = ["meyer", "schmidt", "novak", "rossi", "garcia", "smith", "dubois", "jensen", "kowalski", "tanaka"]
DOMAINS = (
    [("gmail.com", 30), ("outlook.com", 15), ("yahoo.com", 8), ("gmx.de", 7), ("web.de", 5)]
    + [("acme-corp.de", 5), ("example.org", 5), ("contoso.com", 4)]
    + [(f"mail{n}.example.net", 1) for n in range(21)]
)
SUBJECTS = [
    "Your invoice {n}",
    "Password reset for your account",
    "Welcome to Acme, {name}",
    "Order {n} has shipped",
    "Weekly digest - week {w}",
    "Your appointment on {d}",
    "Payment received - thank you",
    "Action required: confirm your e-mail address",
]
HTML = (
    "<html><body><p>Hello {name},</p><p>{subject}.</p>"
    + "<p>This is the body of a transactional mail, long enough to look like one: "
    + "a greeting, two paragraphs of text, a table of items and a footer. " * 8
    + "</p><p>Kind regards<br>Acme Support</p></body></html>"
)
ADDRESS_POOL = 200_000


def pick(rng: random.Random, weighted: list[tuple[str, int]]) -> str:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


class Filler:
    """Builds the rows of ``email`` and ``email_attempt``, oldest first."""

    def __init__(self, rows: int, now: datetime, seed: int = 7) -> None:
        self.rows = rows
        self.now = now
        self.start = now - timedelta(days=DAYS)
        self.rng = random.Random(seed)
        domains = [d for d, _ in DOMAINS]
        weights = [w for _, w in DOMAINS]
        self.addresses = [
            f"{self.rng.choice(FIRST)}.{self.rng.choice(LAST)}{i}@{self.rng.choices(domains, weights)[0]}"
            for i in range(ADDRESS_POOL)
        ]
        sample = Mail(subject="s", html="<p>h</p>", to=[Recipient(address="a@example.com")])
        self.base = json.loads(sample.model_dump_json())
        self.attempt_rows = 0

    def status(self, created: datetime) -> tuple[Status, int | None]:
        rng = self.rng
        age = self.now - created
        x = rng.random()
        if age < timedelta(hours=3):
            if x < 0.25:
                return Status.QUEUED, None
            if x < 0.30:
                return Status.SENDING, None
            if x < 0.40:
                return Status.RETRYING, rng.choice((421, 450))
        if x < 0.935 or (age < timedelta(hours=3) and x < 0.95):
            return Status.SENT, 250
        if x < 0.975:
            return Status.FAILED, rng.choices((550, 554, 553), (7, 2, 1))[0]
        if x < 0.995:
            return Status.DEAD, rng.choice((421, 450))
        return Status.UNKNOWN, None

    def row(self, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        rng = self.rng
        span = (self.now - self.start).total_seconds()
        created = self.start + timedelta(seconds=span * (n + rng.random()) / self.rows)
        created = created.replace(microsecond=0)
        millis = int(created.timestamp() * 1000) + rng.randrange(1000)
        uid = f"{millis:012x}{rng.getrandbits(80):020x}"
        status, code = self.status(created)
        count = 1 if rng.random() < 0.85 else rng.choice((2, 3))
        to = [rng.choice(self.addresses) for _ in range(count)]
        cc = [rng.choice(self.addresses)] if rng.random() < 0.1 else []
        name = to[0].split(".")[0].capitalize()
        subject = rng.choice(SUBJECTS).format(
            n=rng.randrange(10_000, 99_999), name=name, w=rng.randrange(1, 53), d=created.date()
        )
        if n == self.rows // 3:
            to, subject = [RARE_ADDRESS], RARE_SUBJECT
        html = HTML.format(name=name, subject=subject)
        sent_at = created + timedelta(seconds=rng.uniform(0.5, 4)) if status is Status.SENT else None
        attempts = {
            Status.QUEUED: 0,
            Status.SENDING: 1,
            Status.SENT: 1 if rng.random() < 0.97 else 2,
            Status.RETRYING: rng.randint(1, 3),
            Status.FAILED: 1,
            Status.DEAD: 8,
            Status.UNKNOWN: 1,
        }[status]
        if status is Status.SENT:
            assert sent_at is not None
            updated = sent_at
        elif status is Status.DEAD:
            updated = min(created + timedelta(hours=rng.uniform(3, 6)), self.now)
        elif status in (Status.RETRYING, Status.SENDING):
            updated = min(created + timedelta(minutes=rng.uniform(1, 30)), self.now)
        else:
            updated = created + timedelta(seconds=rng.uniform(1, 5))
        updated = updated.replace(microsecond=0)
        if sent_at is not None:
            sent_at = sent_at.replace(microsecond=0)
        state, reply = {
            Status.SENT: ("sent", "2.0.0 Ok: queued as 4F2A1B3C"),
            Status.FAILED: (
                "failed",
                "5.1.1 Recipient address rejected: User unknown in virtual mailbox table",
            ),
        }.get(status, ("pending", ""))
        outcomes = [
            {"address": a, "state": state, "code": code if state != "pending" else None, "reply": reply}
            for a in to + cc
        ]
        error = {
            Status.FAILED: f"{code} 5.1.1 Recipient address rejected: User unknown",
            Status.DEAD: f"{code} 4.7.0 Try again later, closing connection",
            Status.RETRYING: f"{code} 4.7.0 Try again later, closing connection",
            Status.UNKNOWN: "connection lost after the final dot",
        }.get(status, "")
        message_id = f"<{uid}@mail.example.com>"
        payload = dict(self.base)
        payload.update(
            id=uid,
            subject=subject,
            html=html,
            to=[{"address": a, "name": ""} for a in to],
            cc=[{"address": a, "name": ""} for a in cc],
            created_at=created.isoformat(),
            message_id=message_id,
        )
        email = {
            "id": n + 1,
            "title": subject,
            "content": html,
            "sender_name": "Acme Support",
            "receiver": ",".join(to),
            "receiver_name": "",
            "attachment": "",
            "remark": "",
            "is_ok": 1 if status is Status.SENT else 0,
            "is_deleted": 1 if status.final and rng.random() < 0.005 else 0,
            "created_at": created.replace(tzinfo=None),
            "updated_at": updated.replace(tzinfo=None),
            "uid": uid,
            "message_id": message_id,
            "status": status.value,
            "attempts": attempts,
            "recipients": json.dumps(outcomes, separators=(",", ":")),
            "payload": json.dumps(payload, separators=(",", ":")),
            "last_error": error,
            "last_code": code,
            "idempotency_key": None,
            "sent_at": sent_at.replace(tzinfo=None) if sent_at is not None else None,
            "next_attempt_at": None,
        }
        history = []
        if attempts > 1 or status not in (Status.SENT, Status.QUEUED):
            for number in range(1, attempts + 1):
                last = number == attempts
                at = (created + (updated - created) * number / attempts).replace(tzinfo=None)
                history.append(
                    {
                        "email_id": n + 1,
                        "number": number,
                        "started_at": at,
                        "finished_at": at,
                        "outcome": {
                            Status.SENT: "sent",
                            Status.FAILED: "permanent",
                            Status.UNKNOWN: "unknown",
                        }.get(status, "transient")
                        if last
                        else "transient",
                        "code": code if last else 421,
                        "reply": error if last else "4.7.0 Try again later",
                        "recipients": None,
                    }
                )
        self.attempt_rows += len(history)
        return email, history


async def prepare(url: str, rows: int, reuse: bool) -> dict[str, Any]:
    """Create (or reuse) the database, migrate it and fill it."""
    parsed = make_url(url)
    server = create_async_engine(parsed.set(database=""), poolclass=NullPool)
    name = parsed.database
    if not name or not name.replace("_", "").isalnum():
        raise SystemExit("the database name must be a plain identifier")
    try:
        async with server.connect() as conn:
            exists = (
                await conn.execute(
                    sa.text("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = :n"),
                    {"n": name},
                )
            ).scalar_one()
            if exists and reuse:
                have = (await conn.execute(sa.text(f"SELECT COUNT(*) FROM `{name}`.email"))).scalar_one()
                if have == rows:
                    await upgrade(url)
                    return {"filled": False, "rows": rows}
            await conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            await conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    finally:
        await server.dispose()
    await upgrade(url)
    engine = make_engine(url, pool_size=1)
    filler = Filler(rows, datetime.now(UTC))
    started = time.perf_counter()
    try:
        async with engine.connect() as conn:
            for first in range(0, rows, BATCH):
                emails, attempts = [], []
                for n in range(first, min(first + BATCH, rows)):
                    email, history = filler.row(n)
                    emails.append(email)
                    attempts.extend(history)
                await conn.execute(schema.email.insert(), emails)
                if attempts:
                    await conn.execute(schema.email_attempt.insert(), attempts)
                await conn.commit()
                if (first // BATCH) % 50 == 0:
                    print(f"  filled {first + len(emails):>9,} rows", flush=True)
            await conn.execute(sa.text("ANALYZE TABLE email, email_attempt"))
    finally:
        await engine.dispose()
    seconds = time.perf_counter() - started
    return {
        "filled": True,
        "rows": rows,
        "attempt_rows": filler.attempt_rows,
        "fill_seconds": round(seconds, 1),
        "fill_rows_per_s": round(rows / seconds),
    }


def describe(found: Any) -> Any:
    """What a query returned, shortly: rows found, counts, or non-empty buckets."""
    if isinstance(found, dict):
        return {str(status): number for status, number in found.items() if number}
    if isinstance(found, list) and found and hasattr(found[0], "accepted"):
        return {
            "buckets": len(found),
            "accepted": sum(b.accepted for b in found),
            "sent": sum(b.sent for b in found),
            "failed": sum(b.failed for b in found),
        }
    if isinstance(found, list):
        return f"{len(found)} rows"
    return found


def capture(engine: AsyncEngine) -> list[tuple[str, Any]]:
    """Record every statement (and its parameters) the engine runs from now on."""
    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return seen


async def explain(engine: AsyncEngine, statements: list[tuple[str, Any]]) -> list[str]:
    lines = []
    async with engine.connect() as conn:
        for statement, parameters in statements:
            if not statement.lstrip().upper().startswith("SELECT") or "information_schema" in statement:
                continue
            result = await conn.exec_driver_sql("EXPLAIN " + statement, parameters)
            for row in result.mappings():
                lines.append(
                    f"    table={row['table']} type={row['type']} key={row['key']} "
                    f"rows={row['rows']} extra={row['Extra']}"
                )
    return lines


async def measure(url: str, runs: int, show_plans: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    store = SQLStore(url=url, pool_size=2)
    async with store:
        first_page = await store.find(RecordQuery(limit=PAGE))
        deep = await store.find(RecordQuery(limit=1, until=datetime.now(UTC) - timedelta(days=15)))
        now = datetime.now(UTC)
        ten_days_ago = now - timedelta(days=10)
        failed = frozenset({Status.FAILED})
        cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("first page (50 newest)", lambda: store.find(RecordQuery(limit=PAGE))),
            ("status=failed page", lambda: store.find(RecordQuery(statuses=failed, limit=PAGE))),
            (
                "status=failed|dead page",
                lambda: store.find(RecordQuery(statuses=frozenset({Status.FAILED, Status.DEAD}), limit=PAGE)),
            ),
            ("code=550 page", lambda: store.find(RecordQuery(code=550, limit=PAGE))),
            ("recipient 'gmail' (common)", lambda: store.find(RecordQuery(recipient="gmail", limit=PAGE))),
            (
                "recipient 'mail7.example' (~1%)",
                lambda: store.find(RecordQuery(recipient="mail7.example", limit=PAGE)),
            ),
            (
                "recipient, 1 match (full scan)",
                lambda: store.find(RecordQuery(recipient="zelda.quimby", limit=PAGE)),
            ),
            (
                "recipient, 1 match, status=failed",
                lambda: store.find(RecordQuery(recipient="zelda.quimby", statuses=failed, limit=PAGE)),
            ),
            (
                "recipient, 1 match, last 24 h",
                lambda: store.find(
                    RecordQuery(
                        recipient="zelda.quimby", since=datetime.now(UTC) - timedelta(days=1), limit=PAGE
                    )
                ),
            ),
            ("subject 'invoice' (common)", lambda: store.find(RecordQuery(subject="invoice", limit=PAGE))),
            (
                "subject, 1 match (full scan)",
                lambda: store.find(RecordQuery(subject="9f3c-unique", limit=PAGE)),
            ),
            (
                "page 2 via cursor",
                lambda: store.find(RecordQuery(before_id=first_page[-1].id, limit=PAGE)),
            ),
            (
                "page at day 15 via cursor",
                lambda: store.find(RecordQuery(before_id=deep[0].id, limit=PAGE)),
            ),
            ("order=oldest first page", lambda: store.find(RecordQuery(order="oldest", limit=PAGE))),
            (
                "one day, 10 days ago",
                lambda: store.find(
                    RecordQuery(since=ten_days_ago - timedelta(days=1), until=ten_days_ago, limit=PAGE)
                ),
            ),
            ("count_by_status", lambda: store.count_by_status()),
            ("count(status=failed), cap 10000", lambda: store.count(RecordQuery(statuses=failed))),
            ("count(all), cap 10000", lambda: store.count(RecordQuery())),
            ("count(recipient 'gmail'), cap 10000", lambda: store.count(RecordQuery(recipient="gmail"))),
            (
                "activity, last hour by minute",
                lambda: store.activity(
                    since=datetime.now(UTC) - timedelta(hours=1), bucket=timedelta(minutes=1)
                ),
            ),
            (
                "activity, last day by hour",
                lambda: store.activity(
                    since=datetime.now(UTC) - timedelta(days=1), bucket=timedelta(hours=1)
                ),
            ),
        ]
        results = []
        seen = capture(store.engine)
        for name, call in cases:
            times = []
            found: Any = None
            for run in range(runs):
                if run == 1:
                    seen.clear()  # the plans of the second run (the first may read other things)
                started = time.perf_counter()
                found = await call()
                times.append((time.perf_counter() - started) * 1000)
                if run == 1:
                    statements = list(seen)
            results.append(
                {
                    "query": name,
                    "median_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                    "min_ms": round(min(times), 1),
                    "result": describe(found),
                }
            )
            if show_plans:
                print(f"{name}:")
                for line in await explain(store.engine, statements):
                    print(line)
        async with store.engine.connect() as conn:
            info = (
                (
                    await conn.execute(
                        sa.text(
                            "SELECT @@version AS version, @@innodb_buffer_pool_size AS buffer_pool, "
                            "data_length AS data_bytes, index_length AS index_bytes "
                            "FROM information_schema.tables "
                            "WHERE table_schema = DATABASE() AND table_name = 'email'"
                        )
                    )
                )
                .mappings()
                .one()
            )
    return results, dict(info)


async def drop(url: str) -> None:
    parsed = make_url(url)
    server = create_async_engine(parsed.set(database=""), poolclass=NullPool)
    try:
        async with server.connect() as conn:
            await conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{parsed.database}`"))
    finally:
        await server.dispose()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    try:
        fill = await prepare(args.url, args.rows, args.reuse)
        results, info = await measure(args.url, args.runs, args.explain)
    finally:
        if not args.keep:
            await drop(args.url)
    return {
        "benchmark": "dashboard_query",
        "rows": args.rows,
        "runs": args.runs,
        "mariadb": info["version"],
        "innodb_buffer_pool_mib": int(info["buffer_pool"]) // 2**20,
        "email_data_mib": int(info["data_bytes"] or 0) // 2**20,
        "email_index_mib": int(info["index_bytes"] or 0) // 2**20,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "fill": fill,
        "queries": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="reuse a database that has --rows rows")
    parser.add_argument("--explain", action="store_true", help="print the plan of every statement")
    arguments = parser.parse_args()
    if arguments.runs < 5:
        parser.error("--runs must be at least 5")
    # the server's notes about DROP DATABASE IF EXISTS and the like
    warnings.filterwarnings("ignore", module="asyncmy")
    result = asyncio.run(main(arguments))
    print(f"\n{'query':<40} {'median ms':>10} {'max ms':>9}  result")
    for row in result["queries"]:
        print(f"{row['query']:<40} {row['median_ms']:>10.1f} {row['max_ms']:>9.1f}  {row['result']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
