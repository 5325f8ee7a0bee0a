"""The contact store in Redis: caps shared by every replica, checked and charged in one Lua script.

Per customer one hash holds the counts of the last 7 local days (field ``c|<channel>|<day>``,
``o|<offer>|<day>`` and ``t|<day>`` for all channels), so :meth:`RedisContactStore.usage` is one
``HGETALL`` and a charge is one script run: the script reads the week's counts, applies the
policy's caps in the order :meth:`ContactCaps.blocked <src.contact.caps.ContactCaps.blocked>`
does, and only if none is reached increments them and records the contact under its id. Redis
runs a script alone, so two replicas can never both take the last allowed contact. A charge is
idempotent on ``contact_id`` (the id's record is checked first); :meth:`release` undoes it.

Why Redis and not a PostgreSQL transaction for the slot: a charge is one round trip to a server
that does no fsync and takes no row lock; ``benchmarks/bench_serving_shared.py`` measures both.
Durability: Redis persists by its own configuration (AOF ``everysec`` loses at most a second of
charges on a crash: counts can only be lower than the log's, never an offer the log lacks);
every charge expires with the week, so the store does not grow with history.

Any Redis error raises :class:`~src.contact.store.StoreUnavailable`: the caller fails closed.

:meth:`RedisContactStore.ausage` reads the counts on the event loop (``redis.asyncio``), so the
endpoint reads them while it reads the customer's row, without a blocking call on its loop
(a synchronous read there stalls every other request of the process for the round trip).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from src.contact.caps import WEEK_DAYS, Usage
from src.contact.policy import PolicyConfig
from src.contact.store import Charge, StoreUnavailable

TTL_S = (WEEK_DAYS + 1) * 86_400  # a charge stops counting after 7 local days
_SEP = "|"

# KEYS: customer hash, contact record. ARGV: channel, offer, day, channel day cap, channel week
# cap, offer day cap, offer week cap (-1: none), ttl seconds, contact record value.
CHARGE_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'ok' end
local ch, of, day = ARGV[1], ARGV[2], tonumber(ARGV[3])
local fields = {}
for d = day - 6, day do
  fields[#fields + 1] = 'c|' .. ch .. '|' .. d
  fields[#fields + 1] = 'o|' .. of .. '|' .. d
end
local v = redis.call('HMGET', KEYS[1], unpack(fields))
local chd, chw, ofd, ofw = 0, 0, 0, 0
for i = 0, 6 do
  local c = tonumber(v[2 * i + 1]) or 0
  local o = tonumber(v[2 * i + 2]) or 0
  chw = chw + c
  ofw = ofw + o
  if i == 6 then chd = c; ofd = o end
end
local cap = tonumber(ARGV[4])
if cap >= 0 and chd >= cap then return 'cap_channel_day' end
cap = tonumber(ARGV[5])
if cap >= 0 and chw >= cap then return 'cap_channel_week' end
cap = tonumber(ARGV[6])
if cap >= 0 and ofd >= cap then return 'cap_offer_day' end
cap = tonumber(ARGV[7])
if cap >= 0 and ofw >= cap then return 'cap_offer_week' end
redis.call('HINCRBY', KEYS[1], 'c|' .. ch .. '|' .. day, 1)
redis.call('HINCRBY', KEYS[1], 'o|' .. of .. '|' .. day, 1)
redis.call('HINCRBY', KEYS[1], 't|' .. day, 1)
if redis.call('HLEN', KEYS[1]) > 96 then
  local all = redis.call('HKEYS', KEYS[1])
  for _, f in ipairs(all) do
    local d = tonumber(string.match(f, '|(%-?%d+)$'))
    if d and d < day - 6 then redis.call('HDEL', KEYS[1], f) end
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
redis.call('SET', KEYS[2], ARGV[9], 'EX', tonumber(ARGV[8]))
return 'ok'
"""

# KEYS: contact record, customer hash. ARGV: the record value read before (released only if
# it is still the same charge).
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ch, of, day = ARGV[2], ARGV[3], ARGV[4]
for _, f in ipairs({'c|' .. ch .. '|' .. day, 'o|' .. of .. '|' .. day, 't|' .. day}) do
  if tonumber(redis.call('HINCRBY', KEYS[2], f, -1)) <= 0 then redis.call('HDEL', KEYS[2], f) end
end
redis.call('DEL', KEYS[1])
return 1
"""


def _cap(value: int | None) -> int:
    return -1 if value is None else value


class RedisContactStore:
    """A :class:`~src.contact.store.ContactStore` on one Redis (``url``: ``redis://host:port/db``).

    ``prefix`` namespaces the keys (tests, several banks on one server); ``timeout_s`` bounds
    every call, after which the caller fails closed."""

    def __init__(
        self,
        url: str,
        prefix: str = "nextoffer:",
        timeout_s: float = 2.0,
        client: redis.Redis | None = None,
    ) -> None:
        self.prefix = prefix
        self.url = url
        self.timeout_s = timeout_s
        self.client = client or redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),  # one retry: a pooled connection the server dropped
            decode_responses=True,
        )
        # the event loop's client: made on first use, on that loop (its connections belong to it)
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None
        self._charge = self.client.register_script(CHARGE_LUA)
        self._release = self.client.register_script(RELEASE_LUA)

    def _customer_key(self, customer_id: str) -> str:
        return f"{self.prefix}c:{customer_id}"

    def _contact_key(self, contact_id: str) -> str:
        return f"{self.prefix}k:{contact_id}"

    def usage(self, customer_id: str, channel: str, day: int) -> Usage:
        try:
            fields: dict[str, Any] = self.client.hgetall(self._customer_key(customer_id))  # type: ignore[assignment]
        except redis.RedisError as error:
            raise StoreUnavailable(f"Redis contact store: {error}") from error
        return usage_from_fields(fields, channel, day)

    def _async_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 1),
                decode_responses=True,
            )
            self._async = (loop, client)
        return self._async[1]

    async def ausage(self, customer_id: str, channel: str, day: int) -> Usage:
        """:meth:`usage` without blocking the event loop."""
        client = self._async_client()
        try:
            fields: dict[str, Any] = await client.hgetall(self._customer_key(customer_id))  # type: ignore[assignment]
        except (redis.RedisError, OSError, RuntimeError) as error:
            # RuntimeError: uvloop's "handler is closed" on a connection the server reset,
            # which redis.asyncio does not wrap; start over with a new client
            if self._async is not None and self._async[1] is client:
                self._async = None
            raise StoreUnavailable(
                f"Redis contact store: {type(error).__name__}: {error}"
            ) from error
        return usage_from_fields(fields, channel, day)

    def try_charge(self, charge: Charge, policy: PolicyConfig) -> str | None:
        cap, offer_cap = policy.cap_for(charge.channel), policy.offer_cap
        record = _SEP.join(
            (charge.customer_id, charge.channel, charge.offer_id, str(charge.day), charge.source)
        )
        try:
            reason = self._charge(
                keys=[self._customer_key(charge.customer_id), self._contact_key(charge.contact_id)],
                args=[
                    charge.channel,
                    charge.offer_id,
                    charge.day,
                    _cap(cap.per_day),
                    _cap(cap.per_week),
                    _cap(offer_cap.per_day),
                    _cap(offer_cap.per_week),
                    TTL_S,
                    record,
                ],
            )
        except redis.RedisError as error:
            raise StoreUnavailable(f"Redis contact store: {error}") from error
        return None if reason == "ok" else str(reason)

    def release(self, contact_id: str) -> None:
        key = self._contact_key(contact_id)
        try:
            record = self.client.get(key)
            if record is None:
                return
            customer_id, channel, offer_id, day, _ = str(record).rsplit(_SEP, 4)
            self._release(
                keys=[key, self._customer_key(customer_id)],
                args=[record, channel, offer_id, day],
            )
        except redis.RedisError as error:
            raise StoreUnavailable(f"Redis contact store: {error}") from error

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as error:
            raise StoreUnavailable(f"Redis contact store: {error}") from error

    def close(self) -> None:
        self.client.close()
        if self._async is not None:
            loop, client = self._async
            self._async = None
            if loop.is_running():  # closed from a worker thread: close it on its own loop
                loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))


def usage_from_fields(fields: dict[str, Any], channel: str, day: int) -> Usage:
    """The counts of one customer's hash as of ``day`` (the 7 local days ending on it)."""
    first = day - WEEK_DAYS + 1
    channel_day = channel_week = week_total = 0
    offer_day: dict[str, int] = {}
    offer_week: dict[str, int] = {}
    for field, value in fields.items():
        kind, _, rest = field.partition(_SEP)
        name, _, d_text = rest.rpartition(_SEP)
        d = int(d_text)
        if d < first or d > day:
            continue
        n = int(value)
        if n <= 0:
            continue
        if kind == "t":
            week_total += n
        elif kind == "c" and name == channel:
            channel_week += n
            if d == day:
                channel_day += n
        elif kind == "o":
            offer_week[name] = offer_week.get(name, 0) + n
            if d == day:
                offer_day[name] = offer_day.get(name, 0) + n
    return Usage(channel_day, channel_week, offer_day, offer_week, week_total)
