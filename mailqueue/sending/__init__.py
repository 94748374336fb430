"""The sending policy: the path from a rendered message to the wire.

Senders that wrap Senders, each one concern, composed in one place:

- :mod:`~mailqueue.sending.limits`: rate windows (``20/s;1000/h``), the in-process limiter;
- :mod:`~mailqueue.sending.throttle`: reply classification, AIMD slow-down, circuit breaker;
- :mod:`~mailqueue.sending.redis_limits`: the same limits and AIMD state shared in Redis;
- :mod:`~mailqueue.sending.step`: the base of a link that wraps a Sender;
- :mod:`~mailqueue.sending.account_limit`: one account's limit and adaptive throttle (a link);
- :mod:`~mailqueue.sending.accounts`: several accounts behind one Sender, with failover (a link);
- :mod:`~mailqueue.sending.dkim`: DKIM signing (a step);
- :mod:`~mailqueue.sending.domains`: limits and throttle per recipient-domain group (a step);
- :mod:`~mailqueue.sending.verp`: a return path per recipient (a step);
- :mod:`~mailqueue.sending.pipeline`: :func:`build_sender`, the one place that composes the chain.

This package ``__init__`` imports nothing: :mod:`mailqueue.settings` reads
:mod:`~mailqueue.sending.limits`, and the pipeline reads the settings.
"""
