"""The worker's CPU per mail without the SQL Store: one process, in-process Worker.

Preloads N mails (memory Store, file attachments, a RabbitMQ queue of its own)
through :meth:`MailQueue.submit`, then runs a :class:`~mailqueue.worker.Worker`
in this process (uvloop) against Postfix's smtp-sink until every record is
``sent``, and prints the CPU seconds this process used for the deliveries
(``time.thread_time`` of the event loop's thread; smtp-sink and its reader
run in a process of their own), per mail, and the mails/s. The Store is in memory,
so what is left is the worker's own cost: consume and ack (aio-pika), the
claim/record bookkeeping, rendering, SMTP (aiosmtplib), logs and metrics.

    .venv/bin/python benchmarks/worker_cpu.py --mails 3000 --variant small
    .venv/bin/python benchmarks/worker_cpu.py --profile /tmp/prof.txt   # py-spy, collapsed stacks

The figure is less sensitive to other work on the machine than mails/s (it is
CPU time, not wall time); still run it under ``flock /tmp/mailqueue-bench.lock``
when comparing throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - the log goes nowhere, for as long as the process runs
RABBITMQ = os.environ.get("MQ_BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")
FROM = "noreply@example.com"
HTML = "<html><body><p>" + "Hello, this is a benchmark mail. " * 62 + "</p></body></html>"


@contextlib.contextmanager
def sink_process() -> Iterator[SimpleNamespace]:
    """smtp-sink with its reader in a process of its own (its thread would share this one's GIL)."""
    here = Path(__file__).resolve().parent
    child = subprocess.Popen(
        [sys.executable, str(here / "sink.py"), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        while not line.startswith("listening"):
            line = child.stdout.readline()
        host, _, port = line.split()[2].rpartition(":")
        yield SimpleNamespace(host=host, port=int(port))
    finally:
        child.send_signal(2)
        child.wait()


class NullSender:
    """Accepts every message at once (``--sender null``): the worker's CPU without SMTP."""

    from_address = FROM

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> NullSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def send(self, message: Any) -> Any:
        from mailqueue.protocols import RecipientReply, SendResult

        return SendResult({rcpt: RecipientReply(250, "2.0.0 ok") for rcpt in message.recipients})


async def main(args: argparse.Namespace) -> None:
    from mailqueue import Attachment, Mail, MailQueue, Recipient, Status
    from mailqueue.backends.amqp import AMQPQueue
    from mailqueue.backends.memory import MemoryQueue
    from mailqueue.backends.smtp import SMTPSender
    from mailqueue.logs import configure_logging
    from mailqueue.protocols import BackendContext
    from mailqueue.settings import WorkerSettings
    from mailqueue.stores.disk import FileAttachmentStore
    from mailqueue.stores.memory import MemoryStore
    from mailqueue.worker import Worker

    configure_logging(args.log_level, stream=DEVNULL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    name = f"mqcpu-{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="mqcpu-"))
    store = MemoryStore()
    queue: Any = (
        MemoryQueue()
        if args.queue == "memory"
        else AMQPQueue.from_url(f"{RABBITMQ}?queue={name}&exchange={name}", context=BackendContext())
    )
    attachments = FileAttachmentStore.from_url(f"file://{tmp}", context=BackendContext(store=store))
    blob = os.urandom(args.attach) if args.attach else b""
    try:
        with sink_process() as sink:
            async with MailQueue(
                store=store, queue=queue, attachments=attachments, message_id_domain="example.com"
            ) as mq:
                numbers = iter(range(args.mails))

                async def submitter() -> None:
                    for n in numbers:
                        mail = Mail(
                            subject=f"bench {n}", html=HTML, to=[Recipient(address=f"u{n}@example.com")]
                        )
                        files = [Attachment("report.pdf", blob, "application/pdf")] if blob else []
                        await mq.submit(mail, files)

                await asyncio.gather(*(submitter() for _ in range(16)))
                sender: Any = (
                    NullSender()
                    if args.sender == "null"
                    else SMTPSender.from_url(
                        f"smtp://{sink.host}:{sink.port}/?from={FROM}&starttls=false&pool={args.concurrency}"
                        f"&pipelining={args.sender != 'smtp-no-pipelining'}"
                    )
                )
                async with sender:
                    worker = Worker(
                        queue=queue,
                        store=store,
                        attachments=attachments,
                        sender=sender,
                        settings=WorkerSettings(
                            concurrency=args.concurrency,
                            sweep_interval=0,
                            prefetch=args.prefetch or None,
                            text_from_html=args.text_part,
                        ),
                    )
                    profiler = None
                    if args.profile:
                        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                        profiler = subprocess.Popen(  # noqa: ASYNC220 - starting it is quick
                            [py_spy, "record", "--pid", str(os.getpid()), "--format", "raw",
                             "--rate", "250", "-o", args.profile],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )  # fmt: skip
                        await asyncio.sleep(1.0)
                    cpu, wall = time.thread_time(), time.perf_counter()
                    running = asyncio.create_task(worker.run())
                    while (await store.count_by_status())[Status.SENT] < args.mails:
                        await asyncio.sleep(0.05)
                    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                    if profiler is not None:
                        profiler.send_signal(2)
                        profiler.wait()
                    worker.stop()
                    await running
                print(
                    f"queue={args.queue} sender={args.sender} log={args.log_level} "
                    f"mails={args.mails} attach={args.attach} concurrency={args.concurrency} "
                    f"per_s={args.mails / wall:.0f} cpu_s={cpu:.2f} "
                    f"cpu_ms_per_mail={1000 * cpu / args.mails:.3f}"
                )
    finally:
        with contextlib.suppress(Exception):
            import aio_pika

            connection = await aio_pika.connect(RABBITMQ)
            async with connection:
                channel = await connection.channel()
                for queue_name in (name, f"{name}.dead"):
                    await channel.queue_delete(queue_name)
                await channel.exchange_delete(name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=0, help="worker.prefetch (0: 2 x concurrency)")
    parser.add_argument("--attach", type=int, default=0, help="attachment bytes (100 KiB: 102400)")
    parser.add_argument("--queue", choices=["amqp", "memory"], default="amqp")
    parser.add_argument("--sender", choices=["smtp", "smtp-no-pipelining", "null"], default="smtp")
    parser.add_argument("--log-level", default="INFO", help="WARNING drops the per-mail INFO line")
    parser.add_argument("--profile", help="py-spy collapsed stacks of the delivery phase to this file")
    parser.add_argument("--asyncio", action="store_true", help="the stdlib event loop instead of uvloop")
    parser.add_argument(
        "--text-part",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="worker.text_from_html: a text/plain part generated from the HTML (the default)",
    )
    arguments = parser.parse_args()
    if arguments.asyncio:
        asyncio.run(main(arguments))
    else:
        import uvloop

        uvloop.run(main(arguments))
