"""RabbitMQ queue: ``amqp://`` and ``amqps://`` (aio-pika, robust connection).

URL: ``amqp://user:password@host:port/vhost?queue=mailqueue&exchange=mailqueue``
(``amqps://`` for TLS; the vhost is the URL-quoted path, ``/`` when empty).

mailqueue's options:

- ``queue``: the durable queue consumers read (default ``mailqueue``).
- ``exchange``: the durable exchange messages are published to (default
  ``mailqueue``); empty (``exchange=``) publishes through the broker's default
  exchange and binds nothing.
- ``exchange_type``: ``direct`` (default), ``topic``, ``fanout`` or
  ``headers``: must match an exchange that already exists.
- ``routing_key``: the key the queue is bound and published with (default:
  the queue's name).
- ``quorum``: ``true`` declares quorum queues (main, dead-letter and retry
  tiers) for clusters; default ``false`` (classic queues).
- ``confirm_timeout``: seconds a publish waits for the broker's confirm
  before it fails (default 30).
- ``connect_timeout``: seconds :meth:`AMQPQueue.open` and the start of a
  consumer may take (default 10).
- ``tier_min`` / ``tier_max``: the retry delay tiers, ``tier_min * 2**k``
  seconds up to ``tier_max`` (default 0.1 and 14400: eighteen tiers from
  0.1 s to 3.6 h).

Options handed to aio-pika / aiormq unchanged: ``heartbeat`` (seconds,
default 60), ``reconnect_interval`` (seconds between reconnection attempts,
default 5), ``name`` (connection name shown by the broker), ``auth``
(``plain`` or ``external``), and for ``amqps://`` ``cafile``, ``capath``,
``cadata``, ``keyfile``, ``certfile`` and ``no_verify_ssl`` (``1`` turns off
certificate verification, which is on by default). Any other option is a
:class:`~mailqueue.errors.ConfigurationError`.

Capabilities: ``delay=True``, ``shared=True``, ``depth=True``,
``ordered=True``.

Topology: :meth:`AMQPQueue.open` declares what the original service
declared, one durable exchange, one durable queue and one binding (the
routing key), nothing else. Declared lazily, on first use:
``<queue>.dead`` (durable dead-letter queue, never consumed here) and
``<queue>.retry.<ms>`` (one per delay tier: a durable queue with
``x-message-ttl=<ms>`` whose expired messages are dead-lettered back to the
exchange with the routing key). In quorum mode the dead-letter queue is
declared at open as well, because the main queue dead-letters into it
(``x-dead-letter-strategy=at-least-once``) any message over a broker-side
delivery limit.

Publishing: persistent messages (``delivery_mode=2``), the key in header
``x-mailqueue-key`` (``message_id`` is unique per publish: aiormq matches
returned messages to their publish by it), publisher confirms and
``mandatory`` on a channel opened with ``on_return_raises=True`` (without it
aio-pika reports an unroutable message as a success). ``publish`` returns
only after the broker's ``basic.ack``; a ``nack``, a return, a timeout or a
lost connection raise :class:`~mailqueue.errors.QueueError`.

Delays without plugins: a delayed message carries its absolute due time
(``x-mailqueue-due``, epoch milliseconds) and is published into the tier
queue of the largest tier not longer than the time left (the smallest tier if
less is left). TTL expiry happens only at the head of a queue, which is why a
tier queue only ever holds one delay. When a message comes back into the main
queue before it is due, the consumer publishes it into the next fitting tier
(confirmed) and then acks it, without handing it out; messages longer than the
largest tier hop through it again. A delay is honoured to within about
``tier_min`` late, never early (on one clock: publishers' and consumers'
clocks must agree, e.g. NTP).

Consuming: each :meth:`AMQPQueue.consume` opens a channel of its own with
``basic.qos(prefetch_count=prefetch)`` and manual acks. ``ack`` is
``basic.ack``; ``release`` is ``basic.nack(requeue=True)`` (RabbitMQ then sets
``redelivered``); ``retry(d)`` publishes a copy marked
``x-mailqueue-redelivered`` through the tiers, confirmed, and then acks the
original; ``dead(reason)`` publishes a copy to ``<queue>.dead`` with header
``x-mailqueue-dead-reason``, confirmed, then acks. Nothing is ever rejected
without requeue. ``aclose()`` cancels the consumer and gives back what it
fetched but did not hand out; closing the queue closes the channels, so the
broker requeues every unsettled delivery. A delivery settled twice, after the
queue was closed or after a reconnection (its channel is gone and the broker
has requeued it) is left alone. The connection is robust: after a broker
restart it reconnects, restores the topology and the consumers, and a waiting
``__anext__`` resumes; a consumer that cannot start raises
:class:`~mailqueue.errors.QueueError`.

The modules of this package, one concern each: ``options`` (the URL and its
options), ``link`` (the connection and what the parts share), ``topology``
(the broker objects, their names and arguments), ``publisher`` (confirmed
publishes, delays through the tiers), ``consumer`` (consumers and their
deliveries), ``driver`` (aio-pika's and aiormq's failures in our words, and
the one place that reaches under aiormq's API), ``headers``, ``queue``
(:class:`AMQPQueue`).
"""

from __future__ import annotations

from mailqueue.backends.amqp.consumer import AMQPConsumer, AMQPDelivery
from mailqueue.backends.amqp.headers import (
    DEAD_AT_HEADER,
    DUE_HEADER,
    KEY_HEADER,
    REASON_HEADER,
    REDELIVERED_HEADER,
)
from mailqueue.backends.amqp.options import AMQPOptions
from mailqueue.backends.amqp.queue import AMQPQueue

__all__ = [
    "DEAD_AT_HEADER",
    "DUE_HEADER",
    "KEY_HEADER",
    "REASON_HEADER",
    "REDELIVERED_HEADER",
    "AMQPConsumer",
    "AMQPDelivery",
    "AMQPOptions",
    "AMQPQueue",
]
