"""A Kafka topic as the queue: ``kafka://`` (aiokafka).

URL: ``kafka://[user:password@]host1:9092,host2:9092/<topic>?<options>``
(a host without a port means 9092). Options, all optional:

- ``group``: consumer group of the workers (default ``mailqueue``).
- ``client_id``: client id shown in the broker's logs (default ``mailqueue``).
- ``idempotence``: idempotent producer (default ``true``; brokers that do not
  implement ``InitProducerId``, such as Tansu, need ``false``).
- ``batch``: most records taken by one fetch (default 100; the original
  service's ``batchNumber``).
- ``retry_topic`` / ``dead_topic``: default ``<topic>.retry`` / ``<topic>.dead``.
- ``create``: create the three topics if they are missing (default ``false``:
  an operator creates them, and :meth:`KafkaQueue.open` fails with a
  :class:`~mailqueue.errors.QueueError` naming the missing ones);
  ``partitions`` (default 1) and ``replication`` (default 1) apply to them.
- ``timeout``: seconds a publish, commit or admin call may take before it
  fails with :class:`~mailqueue.errors.QueueError` (default 30);
  ``request_timeout``: the driver's per-request timeout (default: ``timeout``).
- ``session_timeout`` (default 10), ``heartbeat`` (default 3),
  ``max_poll_interval`` (default 300), ``rebalance_timeout`` (default:
  ``drain`` + ``session_timeout``, so that a draining member is waited
  for), ``metadata_max_age`` (default 300), ``fetch_wait`` (longest
  broker-side wait of a fetch, default 0.5), ``poll`` (longest pause of the
  fetch loop, default 0.2): seconds, passed to the consumer.
- ``commit_interval``: seconds between offset commits (default 1; commits
  are batched, never one per message).
- ``drain``: seconds a rebalance (or ``aclose()``) waits for handed-out
  deliveries of revoked partitions to be settled (default 30).
- ``hold``: most not-yet-due retry records kept in memory (default 10000);
  past it the retry partitions are paused.
- ``security_protocol``: ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``
  or ``SASL_SSL``; ``sasl_mechanism``: ``PLAIN`` (default), ``SCRAM-SHA-256``
  or ``SCRAM-SHA-512``, with the user and password of the URL;
  ``ssl_cafile``: CA bundle (default: the system's). Certificates are verified.

Unknown options raise :class:`~mailqueue.errors.ConfigurationError`.

Capabilities: ``delay=True``, ``shared=True``, ``depth=False``;
``ordered=True`` only when the main topic has exactly one partition (known
once opened).

How it works (docs/backends/kafka.md says why):

- ``publish`` sends with ``acks=all`` (idempotent per option), key = mail id,
  and returns only once the broker acknowledged, or raises ``QueueError``
  within ``timeout``. ``publish(delay=d)`` goes to the retry topic with the
  due time in a header.
- Each ``consume()`` iterator is one member of the consumer group, subscribed
  to the main and the retry topic, with manual commits. One fetch task keeps
  calling ``getmany()`` (pausing partitions when ``prefetch`` deliveries are
  out and as many records are buffered), so a long SMTP send never stalls
  polling. Deliveries of one partition may be handled concurrently; the
  offset committed per partition is the lowest unfinished offset (the highest
  contiguous finished offset + 1).
- ``retry(delay)``/``release()`` re-publish the record to the retry topic
  (header ``mailqueue-due``: absolute due time in epoch milliseconds;
  ``mailqueue-redelivered: 1``), wait for the ack, then mark the original
  finished; ``dead(reason)`` publishes to the dead topic with the reason in
  header ``mailqueue-reason``. A retry record read before it is due waits in
  an in-memory timer heap (not counted against ``prefetch``); it is
  unfinished, so its partition's commit stops at it, and records after it
  are read again after a restart or rebalance (the worker dedups on the
  Store).
- ``Delivery.redelivered`` is true for records re-published by ``retry`` or
  ``release`` (and by ``close()``) and for records this queue object already
  handed out; a record read again after a crash or rebalance may come with
  ``False`` (Kafka cannot tell; the worker copes through the Store).
- A rebalance drains first: handed-out deliveries of revoked partitions get
  ``drain`` seconds to be settled, offsets are committed, and records fetched
  but not handed out are dropped (the next owner reads them). Settling a
  delivery whose partition moved away is a no-op.
- ``aclose()`` of an iterator stops handing out, keeps its group membership
  only while deliveries it handed out are unsettled (at most ``drain``
  seconds), then commits and leaves the group so that the records it had
  fetched go to another member at once. ``close()`` re-publishes every
  unsettled delivery to the retry topic (due now, redelivered), commits and
  leaves; a delivery whose re-publish fails stays uncommitted and is read
  again by the next owner.

The modules of this package, one concern each: ``options`` (the URL and its
options), ``clients`` (the driver's clients made from them), ``topology``
(the three topics), ``publisher`` (the producer and every publish),
``consumer`` (the group member, its fetch loop, commits, rebalances and
deliveries), ``offsets`` (what may be committed, what was handed out),
``records`` (headers and fetched records), ``queue`` (:class:`KafkaQueue`).
"""

from __future__ import annotations

from mailqueue.backends.kafka.consumer import KafkaConsumer, KafkaDelivery
from mailqueue.backends.kafka.options import KafkaOptions
from mailqueue.backends.kafka.queue import KafkaQueue
from mailqueue.backends.kafka.records import (
    DUE_HEADER,
    ORIGIN_HEADER,
    PUBLISHED_HEADER,
    REASON_HEADER,
    REDELIVERED_HEADER,
)

__all__ = [
    "DUE_HEADER",
    "ORIGIN_HEADER",
    "PUBLISHED_HEADER",
    "REASON_HEADER",
    "REDELIVERED_HEADER",
    "KafkaConsumer",
    "KafkaDelivery",
    "KafkaOptions",
    "KafkaQueue",
]
