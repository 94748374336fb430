"""API ingest: ``mailqueue api`` on RabbitMQ + MariaDB + file attachments, under load.

What it measures, in one run (issue 6, scenarios 2-4 for the API):

- ``small``: the original clients' multipart form (title, content ~1 KiB of
  HTML, sender_name, receiver, receiver_name), ``--connections`` (64) at once;
- ``attachment_1mib``: the same plus one 1 MiB ``attachment[]`` file;
- ``bare_ceiling``: a bare Litestar endpoint, served by the same uvicorn
  settings and number of processes, that reads the same small form body and
  only does one confirmed aio-pika publish;
- ``raw_publish``: raw aio-pika confirmed publishing, 64 concurrent tasks on
  one channel, no HTTP at all;
- ``memory_upload_100mib``: peak RSS of a one-process API while a 100 MiB
  attachment is uploaded (limits raised in its config), over its baseline.

Load comes from ``h2load`` (Debian ``nghttp2-client``, installed if missing)
in a separate process, HTTP/1.1, one request in flight per connection, a
fixed number of requests, and a per-request log (status, latency). A fixed
count is what makes the durability check exact: wrk stops on a timer and
abandons the requests in flight, which the server still completes. After each
API run: the Store holds exactly as many new records as there were 200
answers, the queue exactly as many messages (then it is purged), and for the
attachment run the attachment folder exactly as many files.

Everything uses names of its own (database ``mq_api_bench_<hex>``, queues
``mqapi-<hex>-*``) and removes them at the end.

    .venv/bin/python benchmarks/api.py [--requests 6000] [--workers 1] [--runs 1] [--profile]

Prints a table and one JSON line; writes ``benchmarks/results/api.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MYSQL = "mysql+asyncmy://root@127.0.0.1:3306"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
CONNECTIONS = 64
BOUNDARY = "mqbenchBoundary7MA4YWxkTrZu0gW"
HTML = "<p>" + "Hello, this is a benchmark mail. " * 30 + "</p>"  # ~1 KiB
ENVELOPE_SIZE = 1500  # bytes the bare endpoint publishes: about an envelope of the small mail
MIB = 1024 * 1024


# --- request bodies ---------------------------------------------------------------


def form_fields() -> list[tuple[str, str]]:
    return [
        ("title", "Benchmark mail"),
        ("content", HTML),
        ("sender_name", "Bench"),
        ("receiver", "someone@example.com"),
        ("receiver_name", "Someone"),
    ]


def multipart_head(fields: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in fields:
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    return bytes(out)


def file_part_head(filename: str) -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="attachment[]"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


TAIL = f"--{BOUNDARY}--\r\n".encode()
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def small_body() -> bytes:
    return multipart_head(form_fields()) + TAIL


def attachment_body(size: int) -> bytes:
    return multipart_head(form_fields()) + file_part_head("report.bin") + os.urandom(size) + b"\r\n" + TAIL


# --- services ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextmanager
def running(command: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Start a server process (own process group), wait until ready, yield its pid, stop it."""
    # closed in the finally below, after the server has stopped writing to it
    log = tempfile.NamedTemporaryFile(prefix="mqapi-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy(), start_new_session=True
    )
    try:
        try:
            wait_ready(ready_url, process)
        except RuntimeError:
            log.flush()
            sys.stderr.write(Path(log.name).read_text()[-4000:])
            raise
        yield process.pid
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()
        os.unlink(log.name)


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "nghttp2-client"], check=True, capture_output=True)
    found = shutil.which("h2load")
    if not found:
        raise RuntimeError("h2load (nghttp2-client) could not be installed")
    return found


# --- load ---------------------------------------------------------------------------


def load(url: str, body: bytes, requests: int, connections: int = CONNECTIONS) -> dict[str, Any]:
    """Send ``requests`` POSTs over ``connections`` connections with h2load; statuses and latencies."""
    with tempfile.TemporaryDirectory(prefix="mqapi-load-") as tmp:
        data = Path(tmp) / "body"
        data.write_bytes(body)
        log = Path(tmp) / "log.tsv"
        command = [
            ensure_h2load(),
            "--h1",
            "-n",
            str(requests),
            "-c",
            str(connections),
            "-t",
            "1",
            "-d",
            str(data),
            "-H",
            f"Content-Type: {CONTENT_TYPE}",
            f"--log-file={log}",
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    starts = [int(r[0]) for r in rows]
    statuses = [int(r[1]) for r in rows]
    latencies = sorted(int(r[2]) / 1000 for r in rows)
    ends = [s + int(r[2]) for s, r in zip(starts, rows, strict=True)]
    elapsed = (max(ends) - min(starts)) / 1e6 if rows else 0.0
    ok = sum(1 for s in statuses if s == 200)
    return {
        "requests": requests,
        "answered": len(rows),
        "ok_200": ok,
        "errors": requests - ok,
        "seconds": round(elapsed, 3),
        "rps": round(len(rows) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else 0.0,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
    }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


# --- store and queue checks -----------------------------------------------------------


async def create_database(name: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"{MYSQL}/mysql")
    async with engine.begin() as connection:
        await connection.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    await engine.dispose()


async def drop_database(name: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"{MYSQL}/mysql")
    async with engine.begin() as connection:
        await connection.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    await engine.dispose()


async def count_records(database: str) -> int:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"{MYSQL}/{database}")
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(sa.text("SELECT COUNT(*) FROM email"))).scalar_one())
    finally:
        await engine.dispose()


async def queue_count_and_purge(queue: str) -> int:
    import aio_pika

    connection = await aio_pika.connect(AMQP)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count or 0
        await declared.purge()
        return int(count)


async def delete_amqp(names: list[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP)
    async with connection:
        channel = await connection.channel()
        for name in names:
            for suffix in ("", ".dead"):
                await channel.queue_delete(name + suffix)
            await channel.exchange_delete(name)


async def settle(database: str, queue: str, expected: int, before: int) -> dict[str, Any]:
    """Records and messages added by a run, compared with its 200 answers (waits briefly for stragglers)."""
    records = await count_records(database) - before
    messages = await queue_count_and_purge(queue)
    return {
        "records": records,
        "queued_messages": messages,
        "durable_ok": records == expected and messages == expected,
    }


# --- ceilings ---------------------------------------------------------------------------


async def raw_publish(queue: str, count: int, concurrency: int = CONNECTIONS) -> dict[str, Any]:
    """aio-pika confirmed, persistent, mandatory publishes from ``concurrency`` tasks on one channel."""
    import aio_pika

    connection = await aio_pika.connect(AMQP)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(queue, aio_pika.ExchangeType.DIRECT, durable=True)
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(exchange, queue)
        body = b"x" * ENVELOPE_SIZE
        numbers = iter(range(count))
        latencies: list[float] = []

        async def publisher() -> None:
            for _ in numbers:
                started = time.perf_counter()
                await exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    queue,
                    mandatory=True,
                )
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        depth = (await channel.declare_queue(queue, passive=True)).declaration_result.message_count
        await declared.purge()
    latencies.sort()
    return {
        "messages": count,
        "concurrency": concurrency,
        "rps": round(count / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "queued_messages": depth,
        "durable_ok": depth == count,
    }


def bare_app() -> Any:
    """The bare endpoint: read the request body, one confirmed publish, the same JSON envelope."""
    import aio_pika
    from litestar import Litestar, Request, post

    state: dict[str, Any] = {}
    queue = os.environ["MQAPI_BARE_QUEUE"]
    body = b"x" * ENVELOPE_SIZE

    async def startup() -> None:
        connection = await aio_pika.connect_robust(AMQP)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(queue, aio_pika.ExchangeType.DIRECT, durable=True)
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(exchange, queue)
        state.update(connection=connection, exchange=exchange)

    async def shutdown() -> None:
        await state["connection"].close()

    @post("/api/email/send", status_code=200)
    async def send(request: Request[Any, Any, Any]) -> dict[str, Any]:
        await request.body()
        await state["exchange"].publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue, mandatory=True
        )
        return {"code": 200, "message": "success", "data": {"id": secrets.token_hex(8)}}

    from litestar import get

    @get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return Litestar([send, ready], on_startup=[startup], on_shutdown=[shutdown], logging_config=None)


def serve_bare(port: int, workers: int) -> None:
    """Serve :func:`bare_app` exactly as ``mailqueue api`` serves its app (same uvicorn options)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from mailqueue.cli import _bind, _serve_in_process, _uvicorn_options
    from mailqueue.settings import load_settings

    options = _uvicorn_options(load_settings(log_level="WARNING"), access_log=False)
    sock = _bind("127.0.0.1", port)
    sys.path.insert(0, str(HERE))
    if workers == 1:
        _serve_in_process(bare_app(), sock, options)
    else:
        config = uvicorn.Config("api:bare_app", factory=True, workers=workers, **options)
        Multiprocess(config, sockets=[sock]).run()


# --- memory ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (uvicorn's worker processes)."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def upload(port: int, size: int) -> tuple[int, bytes]:
    """POST a ``size``-byte attachment, streamed from a small buffer (the client holds ~1 MiB)."""
    head = multipart_head(form_fields()) + file_part_head("big.bin")
    tail = b"\r\n" + TAIL
    length = len(head) + size + len(tail)
    chunk = os.urandom(MIB)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            (
                f"POST /api/email/send HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
            ).encode()
            + head
        )
        left = size
        while left:
            piece = chunk[: min(left, len(chunk))]
            sock.sendall(piece)
            left -= len(piece)
        sock.sendall(tail)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[-1]


def measure_upload(pid: int, port: int, size: int) -> dict[str, Any]:
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append(rss_kib(pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.005)

    baseline = rss_kib(pid)
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    status, answer = upload(port, size)
    seconds = time.perf_counter() - started
    stop.set()
    thread.join()
    peak = max([*samples, rss_kib(pid, "VmHWM") if hwm_reset else 0, rss_kib(pid)])
    return {
        "upload_mib": size // MIB,
        "status": status,
        "answer": answer.decode(errors="replace")[:200],
        "seconds": round(seconds, 2),
        "baseline_mib": round(baseline / 1024, 1),
        "peak_mib": round(peak / 1024, 1),
        "growth_mib": round((peak - baseline) / 1024, 1),
        "ok": status == 200 and (peak - baseline) / 1024 <= 30,
    }


# --- the run --------------------------------------------------------------------------


def write_config(
    path: Path, *, database: str, queue: str, attachments: Path, port: int, extra_api: str = ""
) -> None:
    path.write_text(
        f"""queue: "{AMQP}?queue={queue}&exchange={queue}"
store: "{MYSQL}/{database}?charset=utf8mb4"
attachments: "file://{attachments}"
sender: "smtp://127.0.0.1:2525/?from=noreply@example.com"
log_level: WARNING
api:
  host: 127.0.0.1
  port: {port}
{extra_api}"""
    )


def api_command(config: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "mailqueue", "api", "--config", str(config), "--workers", str(workers)]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run of several (by rps), with the ranges of the main figures."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["rps"])
    result = dict(ordered[len(ordered) // 2])
    for key in ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request"):
        if key not in runs[0]:
            continue
        values = [r[key] for r in runs]
        result[f"{key}_range"] = [min(values), max(values)]
    result["durable_ok"] = all(r.get("durable_ok", False) for r in runs)
    result["errors"] = sum(r.get("errors", 0) for r in runs)
    result["runs"] = len(runs)
    return result


def count_files_in(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


async def run_api_scenario(
    pid: int,
    port: int,
    database: str,
    queue: str,
    attachments: Path,
    body: bytes,
    requests: int,
    *,
    count_files: bool = False,
) -> dict[str, Any]:
    before = await count_records(database)
    files_before = count_files_in(attachments) if count_files else 0
    cpu = cpu_seconds(pid)
    result = await asyncio.to_thread(load, f"http://127.0.0.1:{port}/api/email/send", body, requests)
    result["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(pid) - cpu) / requests, 3)
    result.update(await settle(database, queue, result["ok_200"], before))
    if count_files:
        files = count_files_in(attachments) - files_before
        result["attachment_files"] = files
        result["durable_ok"] = result["durable_ok"] and files == result["ok_200"]
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    ensure_h2load()
    tag = secrets.token_hex(4)
    database = f"mq_api_bench_{tag}"
    queue, bare_queue, raw_queue = (f"mqapi-{tag}-{n}" for n in ("main", "bare", "raw"))
    await create_database(database)
    tmp = Path(tempfile.mkdtemp(prefix="mqapi-bench-"))
    results: dict[str, Any] = {
        "scenario": "api",
        "machine": machine(),
        "workers": args.workers,
        "connections": CONNECTIONS,
        "load_generator": "h2load (nghttp2-client), HTTP/1.1, 1 request in flight per connection",
    }
    try:
        attachments = tmp / "attachments"
        port = free_port()
        config = tmp / "api.yaml"
        write_config(config, database=database, queue=queue, attachments=attachments, port=port)
        with contextlib.ExitStack() as servers:
            pid = servers.enter_context(
                running(api_command(config, args.workers), f"http://127.0.0.1:{port}/health/ready")
            )
            api_url = f"http://127.0.0.1:{port}/api/email/send"
            await asyncio.to_thread(load, api_url, small_body(), 1000)
            await queue_count_and_purge(queue)
            bare_url = None
            bare_pid = 0
            if not args.skip_ceilings:
                bare_port = free_port()
                env = os.environ.copy() | {"MQAPI_BARE_QUEUE": bare_queue}
                command = [sys.executable, str(HERE / "api.py"), "--serve-bare", str(bare_port)]
                command += ["--workers", str(args.workers)]
                bare_pid = servers.enter_context(
                    running(command, f"http://127.0.0.1:{bare_port}/health/ready", env=env)
                )
                bare_url = f"http://127.0.0.1:{bare_port}/api/email/send"
                await asyncio.to_thread(load, bare_url, small_body(), 1000)
                await queue_count_and_purge(bare_queue)
            # the API and the bare endpoint take turns, so that both see the same background load
            small: list[dict[str, Any]] = []
            bare: list[dict[str, Any]] = []
            profiler = start_profile(pid, args) if args.profile else None
            for _ in range(args.runs):
                small.append(
                    await run_api_scenario(
                        pid, port, database, queue, attachments, small_body(), args.requests
                    )
                )
                if bare_url is not None:
                    cpu = cpu_seconds(bare_pid)
                    run = await asyncio.to_thread(load, bare_url, small_body(), args.requests)
                    run["server_cpu_ms_per_request"] = round(
                        1000 * (cpu_seconds(bare_pid) - cpu) / args.requests, 3
                    )
                    messages = await queue_count_and_purge(bare_queue)
                    run.update(queued_messages=messages, durable_ok=messages == run["ok_200"])
                    bare.append(run)
            if profiler is not None:
                results["profile"] = finish_profile(profiler)
            results["small"] = summarize(small)
            if bare:
                results["bare_ceiling"] = summarize(bare)
                ratios = [a["rps"] / b["rps"] for a, b in zip(small, bare, strict=True)]
                results["ratio_vs_bare"] = round(results["small"]["rps"] / results["bare_ceiling"]["rps"], 3)
                results["ratio_vs_bare_per_run"] = [round(r, 3) for r in ratios]
            if not args.skip_attachment:
                big = attachment_body(MIB)
                runs = []
                for _ in range(args.runs):
                    runs.append(
                        await run_api_scenario(
                            pid,
                            port,
                            database,
                            queue,
                            attachments,
                            big,
                            args.attachment_requests,
                            count_files=True,
                        )
                    )
                results["attachment_1mib"] = summarize(runs)
                shutil.rmtree(attachments, ignore_errors=True)
        if not args.skip_ceilings:
            results["raw_publish"] = summarize(
                [await raw_publish(raw_queue, args.requests) for _ in range(args.runs)]
            )
        if not args.skip_memory:
            results["memory_upload_100mib"] = await memory_scenario(tmp, database, queue, args.upload_mib)
    finally:
        await drop_database(database)
        await delete_amqp([queue, bare_queue, raw_queue])
        shutil.rmtree(tmp, ignore_errors=True)
    small_result = results["small"]
    results["targets"] = {
        "rps_ge_1500": small_result["rps"] >= 1500,
        "p99_le_100ms": small_result["p99_ms"] <= 100,
        "durable": small_result["durable_ok"],
        "ratio_ge_0.5": results.get("ratio_vs_bare", 0) >= 0.5,
        "memory_growth_le_30mib": results.get("memory_upload_100mib", {}).get("ok"),
    }
    return results


async def memory_scenario(tmp: Path, database: str, queue: str, mib: int) -> dict[str, Any]:
    attachments = tmp / "attachments-memory"
    port = free_port()
    config = tmp / "api-memory.yaml"
    limit = (mib + 10) * MIB
    extra = f"  max_attachment_bytes: {limit}\n  max_request_bytes: {limit + MIB}\n"
    write_config(config, database=database, queue=queue, attachments=attachments, port=port, extra_api=extra)
    with running(api_command(config, 1), f"http://127.0.0.1:{port}/health/ready") as pid:
        # warm up: the first requests import and allocate what every request needs
        await asyncio.to_thread(load, f"http://127.0.0.1:{port}/api/email/send", small_body(), 200)
        await asyncio.to_thread(upload, port, MIB)
        await asyncio.sleep(1)
        result = await asyncio.to_thread(measure_upload, pid, port, mib * MIB)
    await queue_count_and_purge(queue)
    shutil.rmtree(attachments, ignore_errors=True)
    return result


def start_profile(pid: int, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], Path]:
    out = RESULTS / "api-profile.txt"
    RESULTS.mkdir(exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(out)]
    command += ["--subprocesses", "--nonblocking"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return process, out


def finish_profile(profiler: tuple[subprocess.Popen[bytes], Path]) -> dict[str, Any]:
    process, out = profiler
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    return {"collapsed_stacks": str(out.relative_to(HERE.parent))}


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"


def table(results: dict[str, Any]) -> str:
    lines = [f"{'scenario':<18} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'durable':>8}"]
    for name in ("small", "attachment_1mib", "bare_ceiling", "raw_publish"):
        r = results.get(name)
        if r is None:
            continue
        lines.append(
            f"{name:<18} {r['rps']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r.get('errors', 0):>7} {r.get('durable_ok')!s:>8}"
        )
    if "ratio_vs_bare" in results:
        lines.append(f"ratio API/bare: {results['ratio_vs_bare']}")
    memory = results.get("memory_upload_100mib")
    if memory:
        lines.append(
            f"100 MiB upload: status {memory['status']}, RSS {memory['baseline_mib']} -> "
            f"{memory['peak_mib']} MiB (growth {memory['growth_mib']} MiB)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=6000, help="small requests per run")
    parser.add_argument("--attachment-requests", type=int, default=600, help="1 MiB requests per run")
    parser.add_argument("--workers", type=int, default=1, help="API processes (mailqueue api --workers)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (median and ranges)")
    parser.add_argument("--upload-mib", type=int, default=100)
    parser.add_argument("--skip-attachment", action="store_true")
    parser.add_argument("--skip-ceilings", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the API during the small runs")
    parser.add_argument("--output", type=Path, default=RESULTS / "api.json")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_bare is not None:
        serve_bare(arguments.serve_bare, arguments.workers)
        sys.exit(0)
    outcome = asyncio.run(main(arguments))
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(outcome, indent=2) + "\n")
    print(table(outcome))
    print(json.dumps(outcome))
