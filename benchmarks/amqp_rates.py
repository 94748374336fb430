"""RabbitMQ queue rates: confirmed publishes (1 sequential publisher, 32
concurrent tasks) and consume+ack with prefetch 32.

Works on a queue of its own (``mqbench-<random>``), deleted at the end.
Bodies are 2 KiB, about an envelope's size.

    .venv/bin/python benchmarks/amqp_rates.py [N] [URL]
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time

import aio_pika

from mailqueue.backends.amqp import AMQPQueue

BODY = b"x" * 2048


async def sequential(queue: AMQPQueue, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        await queue.publish(f"s{n}", BODY)
    return count / (time.perf_counter() - started)


async def concurrent(queue: AMQPQueue, count: int, tasks: int) -> float:
    keys = iter(range(count))

    async def publisher() -> None:
        for n in keys:
            await queue.publish(f"c{n}", BODY)

    started = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(tasks)))
    return count / (time.perf_counter() - started)


async def consume(queue: AMQPQueue, count: int, prefetch: int) -> float:
    iterator = queue.consume(prefetch=prefetch)
    started = time.perf_counter()
    for _ in range(count):
        delivery = await anext(iterator)
        await delivery.ack()
    rate = count / (time.perf_counter() - started)
    await iterator.aclose()
    return rate


async def main(count: int, url: str) -> dict[str, float | int]:
    name = f"mqbench-{secrets.token_hex(4)}"
    queue = AMQPQueue(url=url, queue=name, exchange=name)
    try:
        async with queue:
            seq = await sequential(queue, count)
            conc = await concurrent(queue, count * 4, 32)
            total = await queue.depth()
            drained = await consume(queue, total, 32)
    finally:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.exchange_delete(name)
    return {
        "messages": count,
        "publish_sequential_per_s": round(seq),
        "publish_32_tasks_per_s": round(conc),
        "consume_ack_prefetch_32_per_s": round(drained),
        "consumed": total,
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    broker = sys.argv[2] if len(sys.argv) > 2 else "amqp://guest:guest@127.0.0.1:5672/"
    result = asyncio.run(main(n, broker))
    for label, value in result.items():
        print(f"{label:>32} {value:>10}")
    print(json.dumps(result))
