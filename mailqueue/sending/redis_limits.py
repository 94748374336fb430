"""Rate limits and throttle state shared by every worker of a deployment, in Redis.

One account's ``20/s;1000/h;500/d`` must hold for all worker processes on
all machines together, so the sliding logs of :mod:`mailqueue.sending.limits` live in
Redis: one sorted set per window (``mq:rl:{account}:{i}``), scored by the send
time in milliseconds. A Lua script, run atomically by Redis, drops the entries
older than the window, and either records the send in every window or returns
how long to wait. Time is Redis's own clock (``TIME``), so workers whose clocks
disagree still share one timeline.

The AIMD state (rate factor, pause-until, clean sends) of the account is a
hash ``mq:rl:{account}:aimd`` read by the same script: one worker's throttle
reply scales the limits (and pauses) every worker.

When Redis cannot be reached the limiter *fails closed*: it does not send,
counts ``mailqueue_rate_store_errors_total``, waits (0.5 s doubling to 10 s)
and asks again. Provider limits are what get an account blocked, so sending
without the shared count is never done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from prometheus_client import Counter

from mailqueue.errors import ConfigurationError, MissingDependencyError
from mailqueue.sending.limits import RATE_LIMIT_WAIT, RateWindow, scaled_limit
from mailqueue.sending.throttle import ACCOUNT_PAUSED_SECONDS, ACCOUNT_RATE, AIMDParams

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as _exc:  # pragma: no cover - the redis extra is missing
    raise MissingDependencyError("redis", "redis") from _exc

__all__ = ["RATE_STORE_ERRORS", "RedisRateLimiter"]

logger = logging.getLogger("mailqueue.redislimits")

RATE_STORE_ERRORS = Counter(
    "mailqueue_rate_store_errors_total", "Failed calls to the shared rate store (Redis); sends waited"
)

# KEYS: aimd hash, then one sorted set per window.
# ARGV: member, then limit and period (ms) per window.
# Returns milliseconds to wait (0: the send was recorded).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local factor = tonumber(redis.call('HGET', KEYS[1], 'factor') or '1')
local paused = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local wait = 0
if paused > now then wait = paused - now end
for i = 2, #KEYS do
  local limit = math.max(1, math.floor(tonumber(ARGV[2 * i - 2]) * factor))
  local period = tonumber(ARGV[2 * i - 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - period)
  local n = redis.call('ZCARD', KEYS[i])
  if n >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], n - limit, n - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + period - now + 1
    if w > wait then wait = w end
  end
end
if wait <= 0 then
  for i = 2, #KEYS do
    redis.call('ZADD', KEYS[i], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i - 1]) + 1000)
  end
end
return wait
"""

# KEYS: the window sets. ARGV: member. Moves a taken slot to the time its send ended.
_DONE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1])
end
return 0
"""

# KEYS: aimd hash, then per window the set of sends and reservations, then per window the
# set of sends only. ARGV: member (the mail id), within (ms), then limit and period (ms) per window.
# Returns {milliseconds until the member's slot, the slot's name ('' when only reserved)}.
# A slot at most `within` away is the caller's (it sleeps until it, sends, then calls _DONE
# with the name). A later one is reserved for the member at the earliest time every window
# allows after the sends *and the reservations* made before (the sets hold future times too),
# so that mails told to come back are spread over the coming slots. When the member comes
# back its reservation is dropped and the sends alone are checked: its slot is then at most
# `within` away, or it is reserved again at the time the sends allow.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local within = tonumber(ARGV[2])
local k = (#KEYS - 1) / 2
local factor = tonumber(redis.call('HGET', KEYS[1], 'factor') or '1')
local paused = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local function period(j) return tonumber(ARGV[2 + 2 * j]) end
local function wait_for(offset)
  local wait = 0
  if paused > now then wait = paused - now end
  for j = 1, k do
    local key = KEYS[offset + j]
    local limit = math.max(1, math.floor(tonumber(ARGV[1 + 2 * j]) * factor))
    local n = redis.call('ZCARD', key)
    if n >= limit then
      local oldest = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
      local w = tonumber(oldest[2]) + period(j) - now
      if w > wait then wait = w end
    end
  end
  return wait
end
local function add(key, j, at, name)
  redis.call('ZADD', key, at, name)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', key, tonumber(last[2]) - now + period(j) + 1000)
end
local function count(at, name)
  for j = 1, k do
    add(KEYS[1 + j], j, at, name)
    add(KEYS[1 + k + j], j, at, name)
  end
end
local function reserve(at)
  for j = 1, k do add(KEYS[1 + j], j, at, ARGV[1]) end
end
for j = 1, k do
  redis.call('ZREMRANGEBYSCORE', KEYS[1 + j], '-inf', now - period(j))
  redis.call('ZREMRANGEBYSCORE', KEYS[1 + k + j], '-inf', now - period(j))
end
local name = ARGV[1] .. ':' .. now
local wait
if k > 0 then
  local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if at then
    at = tonumber(at)
    if at - now > within then return {at - now, ''} end
    for j = 1, k do redis.call('ZREM', KEYS[1 + j], ARGV[1]) end
    wait = wait_for(1 + k)
    if wait <= within then
      count(now + wait, name)
      return {wait, name}
    end
    reserve(now + wait)
    return {wait, ''}
  end
end
wait = wait_for(1)
if wait <= within then
  count(now + wait, name)
  return {wait, name}
end
reserve(now + wait)
return {wait, ''}
"""

# KEYS: aimd hash. ARGV: decrease, floor, pause ms. Returns {factor, pause-left ms}.
_THROTTLED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local factor = tonumber(redis.call('HGET', KEYS[1], 'factor') or '1')
factor = math.max(tonumber(ARGV[2]), factor * tonumber(ARGV[1]))
local paused = math.max(tonumber(redis.call('HGET', KEYS[1], 'until') or '0'), now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'factor', tostring(factor), 'until', paused, 'clean', 0)
redis.call('EXPIRE', KEYS[1], 86400)
return {tostring(factor), paused - now}
"""

# KEYS: aimd hash. ARGV: increase, increase_after. Returns the factor.
_SUCCEEDED = """
local factor = tonumber(redis.call('HGET', KEYS[1], 'factor') or '1')
if factor >= 1 then return '1' end
local clean = redis.call('HINCRBY', KEYS[1], 'clean', 1)
if clean >= tonumber(ARGV[2]) then
  factor = math.min(1, factor + tonumber(ARGV[1]))
  redis.call('HSET', KEYS[1], 'factor', tostring(factor), 'clean', 0)
end
return tostring(factor)
"""


class RedisRateLimiter:
    """An account's rate limit and AIMD state, shared through Redis.

    Args:
        url: ``redis://host:port/db``.
        account: the account name (part of the keys; same name = same limit).
        windows: the configured limits.
        params: AIMD parameters.
        prefix: key prefix (tests use their own).
        account_metrics: publish the ``mailqueue_account_*`` gauges under ``account``
            (``False`` for a recipient-domain group, which has metrics of its own).
    """

    def __init__(
        self,
        url: str,
        account: str,
        windows: tuple[RateWindow, ...],
        params: AIMDParams | None = None,
        *,
        prefix: str = "mq:rl",
        account_metrics: bool = True,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(f"rate_store must be a redis:// URL, not {url.split(':')[0]!r}")
        self.name = account
        self.windows = windows
        self.params = params or AIMDParams()
        self._account_metrics = account_metrics
        self._client = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._throttled = self._client.register_script(_THROTTLED)
        self._succeeded = self._client.register_script(_SUCCEEDED)
        self._done = self._client.register_script(_DONE)
        self._reserve = self._client.register_script(_RESERVE)
        base = f"{prefix}:{account}"
        self._aimd_key = f"{base}:aimd"
        self._window_keys = [f"{base}:{w.limit}/{w.period:g}" for w in windows]
        self._sent_keys = [f"{key}:sent" for key in self._window_keys]  # only with reserve()
        self._reserving = False
        self._window_args: list[int] = []
        for w in windows:
            self._window_args += [w.limit, int(w.period * 1000)]
        self.factor = 1.0
        self._publish()

    def _publish(self) -> None:
        if self.windows and self._account_metrics:
            shortest = min(self.windows, key=lambda w: w.period)
            ACCOUNT_RATE.labels(self.name).set(scaled_limit(shortest, self.factor) / shortest.period)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _call(self, script: object, keys: list[str], args: list[object]) -> object:
        """Run a script; while Redis is unreachable, wait and try again (fail closed)."""
        pause = 0.5
        while True:
            try:
                return await script(keys=keys, args=args)  # type: ignore[operator]
            except (RedisError, OSError) as exc:
                RATE_STORE_ERRORS.inc()
                logger.warning("rate store unreachable (%s); not sending, asking again in %.1f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(10.0, pause * 2)

    async def acquire(self) -> float:
        """Wait for the shared slot in every window (and any pause); return the seconds waited."""
        started = time.monotonic()
        await self.take()
        return time.monotonic() - started

    async def take(self) -> str:
        """Wait for the shared slot in every window (and any pause); return its token for :meth:`done`."""
        waited = 0.0
        keys = [self._aimd_key, *self._window_keys]
        member = uuid.uuid4().hex
        while True:
            wait_ms = int(str(await self._call(self._acquire, keys, [member, *self._window_args])))
            if wait_ms <= 0:
                break
            wait = wait_ms / 1000.0
            await asyncio.sleep(wait)
            waited += wait
        RATE_LIMIT_WAIT.observe(waited)
        return member

    async def reserve(self, member: str, within: float) -> tuple[float, str]:
        """The shared slot of ``member`` (a mail id), without waiting: see
        :meth:`mailqueue.sending.domains.DomainLimiter.reserve` (:meth:`done` counts the
        slot from the end of its send, as for an account)."""
        self._reserving = True
        keys = [self._aimd_key, *self._window_keys, *self._sent_keys]
        args = [member, int(within * 1000), *self._window_args]
        raw = await self._call(self._reserve, keys, args)
        assert isinstance(raw, list)
        token = raw[1].decode() if isinstance(raw[1], bytes) else str(raw[1])
        return max(0, int(raw[0])) / 1000.0, token

    async def done(self, token: str) -> None:
        """The send of slot ``token`` has ended: count it at this time.

        A slot is taken when the send starts, but the provider counts the
        message when it arrives, after connecting and the SMTP dialogue; moving
        the slot to the end of the send means the next send that needs this
        slot starts a full window after the previous one *arrived*, so the
        limit also holds as counted by the server.
        """
        if not token or not self._window_keys:
            return
        keys = [*self._window_keys, *self._sent_keys] if self._reserving else self._window_keys
        try:  # one try only: this also runs while a worker shuts down
            await self._done(keys=keys, args=[token])
        except (RedisError, OSError) as exc:
            RATE_STORE_ERRORS.inc()
            logger.warning("rate store unreachable (%s); the slot stays counted from its start", exc)

    async def throttled(self, pause: float | None) -> None:
        """A throttle reply: lower the shared factor and pause every worker."""
        p = self.params
        wait = min(p.max_pause, p.pause if pause is None else pause)
        raw = await self._call(self._throttled, [self._aimd_key], [p.decrease, p.floor, int(wait * 1000)])
        assert isinstance(raw, list)
        self.factor = float(raw[0].decode() if isinstance(raw[0], bytes) else raw[0])
        if self._account_metrics:
            ACCOUNT_PAUSED_SECONDS.labels(self.name).set(int(raw[1]) / 1000.0)
        self._publish()

    async def succeeded(self) -> None:
        """A clean send: count towards the shared additive increase."""
        p = self.params
        raw = await self._call(self._succeeded, [self._aimd_key], [p.increase, p.increase_after])
        self.factor = float(raw.decode() if isinstance(raw, bytes) else str(raw))
        if self._account_metrics:
            ACCOUNT_PAUSED_SECONDS.labels(self.name).set(0)
        self._publish()
