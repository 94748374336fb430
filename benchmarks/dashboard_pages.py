"""The operator dashboard's pages on a million mails in MariaDB, through the real app.

Where ``dashboard_query.py`` times the Store's queries, this times what an
operator waits for: each ``/ui`` page as the Litestar app answers it (its
queries side by side, the HTML rendered), in process through Litestar's test
client, so the network is left out. The database is filled as
``dashboard_query.py`` fills its own (a database of its own by default;
``--reuse`` keeps one that already holds ``--rows`` rows, ``--keep`` leaves it
afterwards); median and max of ``--runs``
requests per page, the first (cold) one included. Prints a table and a JSON
line; the result goes to ``benchmarks/results/dashboard_pages.json``.

    .venv/bin/python benchmarks/dashboard_pages.py [--rows 1000000] [--runs 7] [--keep] [--reuse]
        [--url mysql+asyncmy://root@127.0.0.1:3306/mq_bench_dash_pages]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dashboard_query import drop, prepare

from mailqueue import load_settings
from mailqueue.contrib.litestar_app import create_app

RESULTS = Path(__file__).parent / "results" / "dashboard_pages.json"
TOKEN = "dashboard-pages-benchmark-0123456789"
PAGES = [
    ("overview, last hour", "/ui"),
    ("overview, last day", "/ui?window=day"),
    ("list, first page", "/ui/messages"),
    ("list, status=failed", "/ui/messages?status=failed"),
    ("list, status=failed|dead", "/ui/messages?status=failed&status=dead"),
    ("list, code=550", "/ui/messages?code=550"),
    ("list, recipient 'gmail'", "/ui/messages?recipient=gmail"),
    ("list, subject 'invoice'", "/ui/messages?subject=invoice"),
    ("list, oldest first", "/ui/messages?order=oldest"),
    ("list, one day 10 days ago", None),
    ("list, page 2 (older link)", None),
    ("message detail", None),
    ("re-send confirmation, failed", "/ui/resend?status=failed"),
]
_OLDER = re.compile(r'<a rel="next" href="(/ui/messages\?[^"]+)"')
_MAIL = re.compile(r'href="(/ui/messages/[0-9a-z_-]+)"')


async def measure(url: str, runs: int) -> list[dict[str, Any]]:
    settings = load_settings(store=url, queue="sql://", attachments="memory://", api={"tokens": [TOKEN]})
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # the app opens its own backends: the test client runs it in an event loop of its own
    async with AsyncTestClient(create_app(settings), base_url="http://127.0.0.1", timeout=120) as client:
        first = await client.get("/ui/messages", headers=headers)
        older = _OLDER.search(first.text)
        failed = await client.get("/ui/messages?status=failed", headers=headers)
        mail = _MAIL.search(failed.text)
        if older is None or mail is None:
            raise SystemExit(f"the list did not answer as expected: {first.status_code} {failed.status_code}")
        day = (datetime.now(UTC) - timedelta(days=10)).replace(hour=0, minute=0, second=0, microsecond=0)
        targets = {
            "list, one day 10 days ago": (
                f"/ui/messages?since={day:%Y-%m-%dT%H:%M}&until={day + timedelta(days=1):%Y-%m-%dT%H:%M}"
            ),
            "list, page 2 (older link)": older.group(1).replace("&amp;", "&"),
            "message detail": mail.group(1),
        }
        results: list[dict[str, Any]] = []
        for name, path in PAGES:
            target = path or targets[name]
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                answer = await client.get(target, headers=headers)
                times.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    raise SystemExit(f"{target}: {answer.status_code} {answer.text[:300]}")
            found = re.search(r'id="match-count">\s*([^<]+?)\s*<', answer.text)
            results.append(
                {
                    "page": name,
                    "path": target,
                    "median_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                    "bytes": len(answer.content),
                    "shows": " ".join(found.group(1).split()) if found else "",
                }
            )
    return results


async def main(args: argparse.Namespace) -> dict[str, Any]:
    try:
        fill = await prepare(args.url, args.rows, args.reuse)
        pages = await measure(args.url, args.runs)
    finally:
        if not args.keep:
            await drop(args.url)
    return {
        "benchmark": "dashboard_pages",
        "rows": args.rows,
        "runs": args.runs,
        "fill": fill,
        "pages": pages,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="mysql+asyncmy://root@127.0.0.1:3306/mq_bench_dash_pages")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="reuse a database that has --rows rows")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore", module="asyncmy")
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(main(arguments))
    print(f"\n{'page':<32} {'median ms':>10} {'max ms':>9} {'KiB':>6}  shows")
    for row in result["pages"]:
        print(
            f"{row['page']:<32} {row['median_ms']:>10.1f} {row['max_ms']:>9.1f} "
            f"{row['bytes'] / 1024:>6.1f}  {row['shows']}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
