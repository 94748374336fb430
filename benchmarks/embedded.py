"""Embedded default, end to end: submit N mails, then one worker delivers them.

SQLite store and ``sql`` queue in a temporary folder, file attachments,
``outbox`` sender. Prints submit rate and delivery rate (first to last).

    .venv/bin/python benchmarks/embedded.py [N] [CONCURRENCY]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from mailqueue import Mail, MailQueue, Recipient, Status, Worker, WorkerSettings
from mailqueue.backends.outbox import OutboxSender

HTML = "<p>" + "Hello, this is a benchmark mail. " * 60 + "</p>"  # ~2 KiB


async def main(count: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with MailQueue.from_urls(
            store=f"sqlite+aiosqlite:///{root / 'mailqueue.db'}",
            queue="sql://?poll=0.05&batch=50",
            attachments=f"file://{root / 'attachments'}",
            message_id_domain="example.com",
        ) as mq:
            started = time.perf_counter()
            ids = []
            for n in range(count):
                mail = Mail(subject=f"bench {n}", html=HTML, to=[Recipient(address=f"user{n}@example.com")])
                ids.append((await mq.submit(mail)).id)
            submit_seconds = time.perf_counter() - started
            sender = OutboxSender(path=root / "outbox", from_address="noreply@example.com")
            async with sender:
                worker = Worker(
                    queue=mq.queue,
                    store=mq.store,
                    attachments=mq.attachments,
                    sender=sender,
                    settings=WorkerSettings(concurrency=concurrency),
                )
                started = time.perf_counter()
                task = asyncio.create_task(worker.run())
                while worker.counts["sent"] < count:
                    await asyncio.sleep(0.01)
                deliver_seconds = time.perf_counter() - started
                worker.stop()
                await task
            records = [await mq.status(i) for i in ids]
            sent = sum(1 for r in records if r is not None and r.status is Status.SENT)
    return {
        "mails": count,
        "concurrency": concurrency,
        "submit_per_s": round(count / submit_seconds, 1),
        "deliver_per_s": round(count / deliver_seconds, 1),
        "sent": sent,
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    result = asyncio.run(main(n, c))
    print(f"{'mails':>8} {'conc':>5} {'submit/s':>10} {'deliver/s':>10}")
    r = result
    print(f"{r['mails']:>8} {r['concurrency']:>5} {r['submit_per_s']:>10} {r['deliver_per_s']:>10}")
    print(json.dumps(result))
