"""Write ``benchmarks/RESULTS.md`` from ``benchmarks/results/*.json``.

Reads whatever result files exist (``worker.json`` from ``worker.py``,
``api.json`` from ``api.py``, ``dashboard_query.json`` from
``dashboard_query.py``, ``amqp_rates.json`` / ``kafka_rates.json`` captured by
``run_all``, and any other ``*.json``), describes the machine (CPU, cores,
RAM, kernel, versions of Python, MariaDB, RabbitMQ, Tansu, Postfix's
smtp-sink and the main libraries), and checks the targets of issue 6, each as
pass / FAIL / not measured. Unknown keys are shown as they are, so a scenario
that adds figures needs no change here.

    .venv/bin/python benchmarks/report.py [--note "other work ran on the machine"]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
OUTPUT = HERE / "RESULTS.md"
LIMITS = HERE / "LIMITS.md"  # hand-written: what limits the figures, copied into RESULTS.md
CHART = "worker-concurrency.png"


# --- the machine ----------------------------------------------------------------------


def _first(path: str, prefix: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return "?"


def _run(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _mariadb_version() -> str:
    async def ask() -> str:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        url = os.environ.get("MQ_BENCH_MARIADB", "root@127.0.0.1:3306")
        engine = create_async_engine(f"mysql+asyncmy://{url}/mysql")
        try:
            async with engine.connect() as conn:
                return str((await conn.execute(text("SELECT VERSION()"))).scalar())
        finally:
            await engine.dispose()

    try:
        return asyncio.run(ask())
    except Exception:
        return "?"


def _rabbitmq_version() -> str:
    async def ask() -> str:
        import aio_pika

        url = os.environ.get("MQ_BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")
        connection = await aio_pika.connect(url)
        async with connection:
            props = connection.transport.connection.server_properties if connection.transport else {}
            version = props.get("version", "?")
            return version.decode() if isinstance(version, bytes) else str(version)

    try:
        return asyncio.run(ask())
    except Exception:
        return _run("rabbitmqctl", "version") or "?"


def _tansu_version() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from brokers import tansu_binary  # type: ignore[import-not-found]
    except ImportError:
        return "?"
    binary = tansu_binary()
    if binary is None:
        return "not installed"
    return _run(str(binary), "--version") or "?"


def _postfix_version() -> str:
    try:
        from sink import postfix_version

        return postfix_version()
    except Exception:
        return "?"


def machine() -> dict[str, str]:
    """A description of this machine and of the software the benchmarks used."""
    kib = _first("/proc/meminfo", "MemTotal")
    ram = f"{int(kib.split()[0]) / 2**20:.1f} GiB" if kib != "?" else "?"
    libraries = []
    for name in (
        "aiosmtplib",
        "aio-pika",
        "aiokafka",
        "SQLAlchemy",
        "asyncmy",
        "aiosqlite",
        "litestar",
        "uvicorn",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            libraries.append(f"{name} {metadata.version(name)}")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    commit = _run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD") or "?"
    return {
        "CPU": _first("/proc/cpuinfo", "model name"),
        "cores": str(os.cpu_count()),
        "RAM": ram,
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "MariaDB": _mariadb_version(),
        "RabbitMQ": _rabbitmq_version(),
        "Tansu": _tansu_version(),
        "Postfix (smtp-sink)": _postfix_version(),
        "libraries": ", ".join(libraries),
        "mailqueue commit": commit,
        "load average at report time (1/5/15 min)": " / ".join(load),
    }


# --- formatting -----------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(no rows)_\n"
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns and not isinstance(row[k], (dict, list))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def load(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def verdict(value: float | None, ok: bool | None, shown: str) -> tuple[str, str]:
    if value is None or ok is None:
        return "not measured", "-"
    return shown, "pass" if ok else "**FAIL**"


# --- sections -------------------------------------------------------------------------


def targets(worker: Any, api: Any) -> str:
    rows: list[tuple[str, str, str]] = []
    runs = (worker or {}).get("runs", [])

    def run(backend: str, variant: str = "small") -> dict[str, Any] | None:
        return next((r for r in runs if r["backend"] == backend and r["variant"] == variant), None)

    amqp = run("amqp")
    rate = amqp.get("per_s") if amqp else None
    rows.append(
        (
            "Worker, amqp + MariaDB, 2 KiB mails: >= 1,500 mails/s",
            *verdict(
                rate,
                None if rate is None else rate >= 1500 and bool(amqp and amqp.get("ok")),
                f"{fmt(rate)} mails/s",
            ),
        )
    )
    ratio = amqp.get("ratio") if amqp else None
    rows.append(
        (
            "Worker >= 0.5 x raw aiosmtplib ceiling (same run, same connections)",
            *verdict(
                ratio,
                None if ratio is None else ratio >= 0.5,
                f"{fmt(ratio)} x ({fmt(amqp.get('ceiling_per_s') if amqp else None)} mails/s ceiling)",
            ),
        )
    )
    sweep = (worker or {}).get("sweep") or []
    if sweep:
        best = max(sweep, key=lambda p: p.get("worker_per_s") or 0)
        rows.append(
            (
                "(information) best of the concurrency sweep, amqp + MariaDB",
                f"{fmt(best.get('worker_per_s'))} mails/s at concurrency {best['concurrency']}, "
                f"{fmt(best.get('ratio'))} x its ceiling",
                "-",
            )
        )
    embedded = run("embedded")
    rate = embedded.get("per_s") if embedded else None
    rows.append(
        (
            "Embedded default (SQLite + sql queue + outbox): >= 300 mails/s",
            *verdict(
                rate,
                None if rate is None else rate >= 300 and bool(embedded and embedded.get("ok")),
                f"{fmt(rate)} mails/s",
            ),
        )
    )
    small = (api or {}).get("small") or {}
    rps = small.get("rps")
    rows.append(
        (
            "API, small requests, 64 connections: >= 1,500 req/s",
            *verdict(rps, None if rps is None else rps >= 1500, f"{fmt(rps)} req/s"),
        )
    )
    p99 = small.get("p99_ms")
    rows.append(("API p99 <= 100 ms", *verdict(p99, None if p99 is None else p99 <= 100, f"{fmt(p99)} ms")))
    durable = small.get("durable_ok")
    rows.append(
        (
            "API: every 200 durable (records and queue messages == 200s)",
            *verdict(durable, durable, "yes" if durable else "no"),
        )
    )
    ratio = (api or {}).get("ratio_vs_bare")
    bare = ((api or {}).get("bare_ceiling") or {}).get("rps")
    rows.append(
        (
            "API >= 0.5 x bare Litestar + confirmed publish endpoint",
            *verdict(
                ratio, None if ratio is None else ratio >= 0.5, f"{fmt(ratio)} x ({fmt(bare)} req/s bare)"
            ),
        )
    )
    memory = (api or {}).get("memory_upload_100mib") or {}
    growth = memory.get("growth_mib")
    rows.append(
        (
            "API grows <= 30 MiB during a 100 MiB upload",
            *verdict(
                growth,
                None if growth is None else growth <= 30 and memory.get("ok", True) is not False,
                f"{fmt(growth)} MiB",
            ),
        )
    )
    wmem = (worker or {}).get("memory")
    bounded = wmem.get("bounded") if wmem else None
    shown = ""
    if wmem:
        peaks = ", ".join(
            f"{r['mails']:,} queued: "
            + (f"{fmt(r['peak_rss_mib'])} MiB" if r.get("peak_rss_mib") else "failed")
            for r in wmem["runs"]
        )
        shown = f"{peaks}; concurrency x message = {fmt(wmem['bound_mib'])} MiB"
    rows.append(
        (
            "Worker memory bounded by concurrency x message size, not queue length",
            *verdict(0.0 if wmem else None, bounded, shown),
        )
    )
    lines = ["| target | measured | result |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {r} |" for t, m, r in rows]
    return "\n".join(lines) + "\n"


def worker_section(worker: Any) -> str:
    if not worker:
        return "_Not run (benchmarks/worker.py)._\n"
    dates = worker.get("section_dates") or {}
    when = ", ".join(f"{k} {v}" for k, v in dates.items()) or worker.get("date", "?")
    out = [f"Measured: {when}.\n\n"]
    if worker.get("runs"):
        out.append(
            "One `mailqueue worker` process per row, mails preloaded with `MailQueue.submit`; "
            "`per_s` = mails/s from the first to the last mail the sink accepted (embedded: the "
            "first and last `.eml` written to the outbox); `recorded_per_s` = mails / (first delivery -> "
            "every record `sent` in the Store); `received` = mails the sink counted (exactly once each "
            "if it equals `mails`); `ratio` = worker / raw aiosmtplib ceiling.\n\n"
        )
        out.append(
            md_table(
                worker["runs"],
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
                    "submit_per_s",
                    "load_1min",
                    "ok",
                ],
            )
        )
        errors = [r for r in worker["runs"] if r.get("error")]
        for r in errors:
            out.append(f"\n`{r['backend']}/{r['variant']}` error: `{fmt(r['error'])[:500]}`\n")
    if worker.get("ceilings"):
        out.append(
            "\nRaw aiosmtplib ceiling (pre-built bytes, persistent connections, same sink; "
            "median of 3 runs):\n\n"
        )
        out.append(
            md_table(
                worker["ceilings"], ["variant", "connections", "mails", "per_s", "range", "received", "ok"]
            )
        )
    if worker.get("sweep"):
        out.append(
            "\n### Concurrency sweep (amqp + MariaDB, 2 KiB mails)\n\n"
            f"![worker throughput vs concurrency]({CHART})\n\n"
        )
        out.append(
            md_table(
                worker["sweep"],
                ["concurrency", "worker_per_s", "ceiling_per_s", "ratio", "worker_cpu_s", "ok"],
            )
        )
    memory = worker.get("memory")
    if memory:
        out.append(
            "\n### Worker memory (1 MiB attachments, amqp + MariaDB, "
            f"concurrency {memory['concurrency']})\n\n"
            f"A message is {fmt(memory['message_mib'])} MiB on the wire; concurrency x message = "
            f"{fmt(memory['bound_mib'])} MiB. Idle worker peak: {fmt(memory['idle_peak_mib'])} MiB. "
            f"Growth of the peak from the shortest to the longest queue: "
            f"{fmt(memory['growth_with_queue_mib'])} MiB. Bounded (that growth <= concurrency x message, "
            f"every mail delivered once and recorded): {fmt(memory['bounded'])}.\n\n"
            "![worker RSS while sending 1 MiB mails](worker-memory.png)\n\n"
        )
        out.append(
            md_table(memory["runs"], ["mails", "peak_rss_mib", "per_s", "received", "sent_in_store", "ok"])
        )
    return "".join(out)


def api_section(api: Any) -> str:
    if not api:
        return "_Not run (benchmarks/api.py)._\n"
    out = []
    for key in ("machine", "workers", "connections", "load_generator"):
        if key in api:
            out.append(f"- {key}: {fmt(api[key])}\n")
    rows = []
    for name, value in api.items():
        if isinstance(value, dict) and ("rps" in value or "per_s" in value):
            rows.append(
                {"scenario": name, **{k: v for k, v in value.items() if not isinstance(v, (dict, list))}}
            )
    if rows:
        out.append("\n" + md_table(rows))
    if "ratio_vs_bare" in api:
        out.append(f"\nAPI / bare endpoint: {fmt(api['ratio_vs_bare'])} x\n")
    memory = api.get("memory_upload_100mib")
    if isinstance(memory, dict):
        out.append("\n100 MiB upload:\n\n" + md_table([memory]))
    others = {
        k: v
        for k, v in api.items()
        if k
        not in {
            "machine",
            "workers",
            "connections",
            "load_generator",
            "ratio_vs_bare",
            "memory_upload_100mib",
            "targets",
            "scenario",
        }
        and not any(r["scenario"] == k for r in rows)
    }
    if others:
        out.append("\nOther figures: " + "; ".join(f"{k}: {fmt(v)}" for k, v in others.items()) + "\n")
    return "".join(out)


def dashboard_section(data: Any) -> str:
    if not data:
        return "_Not run (benchmarks/dashboard_query.py)._\n"
    out = []
    head = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    out.append(", ".join(f"{k}: {fmt(v)}" for k, v in head.items()) + "\n\n")
    if isinstance(data.get("queries"), list):
        out.append(md_table(data["queries"]))
    for key, value in data.items():
        if isinstance(value, dict):
            out.append(f"\n{key}: " + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "\n")
    return "".join(out)


def generic_section(data: Any) -> str:
    if isinstance(data, list):
        return md_table([d for d in data if isinstance(d, dict)])
    if isinstance(data, dict):
        flat = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
        out = md_table([flat]) if flat else ""
        for key, value in data.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                out += f"\n{key}:\n\n" + md_table(value)
            elif isinstance(value, dict):
                out += f"\n{key}: " + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "\n"
        return out
    return f"`{fmt(data)}`\n"


def build(note: str) -> str:
    worker, api, dashboard = load("worker"), load("api"), load("dashboard_query")
    box = machine()
    out = [
        "# Benchmark results\n\n",
        "Written by `benchmarks/report.py` from `benchmarks/results/*.json` "
        "(run everything with `benchmarks/run_all`; see `benchmarks/README.md`).\n\n",
        f"Report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n",
    ]
    if note:
        out.append(f"> **Note:** {note}\n\n")
    out.append("## Machine\n\n| | |\n|---|---|\n")
    out += [f"| {k} | {fmt(v)} |\n" for k, v in box.items()]
    out.append(
        "\nBroker, database, smtp-sink, load generator and the measured process all share this machine.\n"
    )
    out.append("\n## Targets\n\n" + targets(worker, api))
    if LIMITS.exists():  # the hand-written analysis of what limits the figures
        out.append("\n" + LIMITS.read_text())
    out.append("\n## Worker throughput (benchmarks/worker.py)\n\n" + worker_section(worker))
    out.append("\n## API ingest (benchmarks/api.py)\n\n" + api_section(api))
    out.append("\n## Dashboard queries (benchmarks/dashboard_query.py)\n\n" + dashboard_section(dashboard))
    known = {"worker", "api", "dashboard_query"}
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem in known:
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        out.append(f"\n## {path.stem} (benchmarks/results/{path.name})\n\n" + generic_section(data))
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--note", default=os.environ.get("MQ_BENCH_NOTE", ""), help="a line shown on top")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    text = build(args.note)
    args.output.write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
