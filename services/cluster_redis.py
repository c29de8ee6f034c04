"""The Redis adapter of a cluster node: moves presence and node messages, decides nothing.

Presence: one key per camera (``<prefix>:camera:<device id>`` =
``node/connection@generation``) with a lease, renewed every third of it together
with the node's own key (``<prefix>:node:<id>``); the renewal re-creates what a
restarted, empty Redis lost. Every write of a presence key, the claim after a
registration and each renewal alike, is one compare-and-set in Redis (``_CLAIM``):
it writes only if the key is missing, already ours, or names an older generation.
So the newer registration wins whichever node's write arrives last: a dead node's
last renewal, or a claim that waited for a connection, cannot take the key back.

Messages: one pub/sub channel per node (``<prefix>:to:<id>``); a publish
nobody received is a node that is gone. While Redis is unreachable the node
serves its own cameras and viewers, answers the rest "unavailable", and says
``degraded`` on /healthz; it comes back by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.core import Metric
from redis.exceptions import RedisError

from services.cluster import (
    REFUSALS,
    Claim,
    ClusterRouter,
    ClusterSettings,
    Evict,
    Locate,
    Publish,
    Release,
    encode_node,
    holder_node,
    redacted,
)
from services.metrics import counter, gauge
from services.routing import Action, Extension

logger = logging.getLogger(__name__)

#: Presence keys renewed per pipeline round trip.
BATCH = 1000
#: Node checks a node's key must be missing in before its sessions are ended (a
#: restarted Redis has no node keys until each node's next renewal).
MISSING_CHECKS = 3

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then
  local h, g = string.match(v, '^(.*)@(%d+)$')
  local mh, mg = string.match(ARGV[1], '^(.*)@(%d+)$')
  if g and (#g > #mg or (#g == #mg and (g > mg or (g == mg and h > mh)))) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if v and v ~= ARGV[1] then return v end
return 1
"""
"""Set presence key KEYS[1] to ARGV[1] (``holder@generation``) for ARGV[2] ms unless
it names a newer registration: a higher generation (decimal, no leading zeros, so
the longer is the higher), or the same one of a greater holder (a tie broken the
same way on every node). A value without a generation (a node of an older
release) counts as the oldest. Returns 1 (set: it was ours, or missing), the
older value it replaced, or 0 (not set: a newer registration holds it). Integers
for the common cases: a renewal of 100k keys parses 100k small replies."""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_FAILURES = (RedisError, OSError, TimeoutError)

Perform = Callable[[list[Action]], Awaitable[None]]


MAX_CONNECTIONS = 100
"""Redis connections one client keeps at most; a command waits for a free one (up to
the Redis timeout) rather than fail: under a burst of registrations a failure
would count as Redis being unreachable."""


def _client(url: str, timeout: float, options: dict[str, Any]) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=timeout, **options)
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


class RedisCluster:
    """One node's link to Redis, owned by the rendezvous (``start``/``stop``)."""

    def __init__(self, settings: ClusterSettings, router: ClusterRouter, perform: Perform) -> None:
        self.settings = settings
        self.router = router
        self._perform = perform
        options: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
            "health_check_interval": max(1.0, settings.lease / 3),
            "decode_responses": True,
        }
        if settings.tls_ca and settings.redis_url.startswith("rediss://"):
            options["ssl_ca_certs"] = settings.tls_ca
        self.client = _client(settings.redis_url, settings.redis_timeout, options)
        # Messages from other nodes arrive as bytes: what is not UTF-8 is refused by
        # the router's parser, never by the client's decoder in the listening task.
        options["decode_responses"] = False
        self._raw = _client(settings.redis_url, settings.redis_timeout, options)
        self._claim_script = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._subscribed = False
        self._renewed = False
        self._reported_down = False
        self._missing: dict[str, int] = {}
        self.last_error: str | None = None
        self.outages = 0
        """Times Redis became unreachable since start."""
        self.published_unreceived = 0

    @property
    def degraded(self) -> bool:
        """Redis is unreachable (or not yet reached): cross-node routing is off."""
        return not (self._subscribed and self._renewed)

    def health(self) -> dict[str, Any]:
        return {
            "node": self.settings.node_id,
            "redis": redacted(self.settings.redis_url),
            "redis_ok": not self.degraded,
            "last_error": self.last_error if self.degraded else None,
            "outages": self.outages,
        }

    def metrics(self) -> Iterator[Metric]:
        """This node's cluster families, read at scrape time."""
        yield gauge("peercam_rendezvous_cluster_redis_up",
                    "1 while Redis is reachable (presence and cross-node routing work);"
                    " 0: degraded, serving this node's own cameras and viewers only",
                    0 if self.degraded else 1)
        yield counter("peercam_rendezvous_cluster_redis_outages",
                      "Times Redis became unreachable", self.outages)
        yield counter("peercam_rendezvous_cluster_node_messages_refused",
                      "Messages from other nodes refused, by reason", labels=["reason"],
                      values={r: self.router.node_refused[r] for r in REFUSALS})
        yield counter("peercam_rendezvous_cluster_publishes_unreceived",
                      "Messages for another node that no node received (it is gone, or"
                      " Redis is down)", self.published_unreceived)

    async def start(self) -> None:
        logger.info("cluster node %s on %s (lease %.0f s)", self.settings.node_id,
                    redacted(self.settings.redis_url), self.settings.lease)
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="cluster-listen"),
            asyncio.create_task(self._renew_loop(), name="cluster-renew"),
        ]

    async def stop(self) -> None:
        """Stop the loops; give back this node's presence (best effort, bounded)."""
        tasks, self._tasks = self._tasks, []
        self._stopped = True  # what the closing connections release is done below
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*_FAILURES):
            async with asyncio.timeout(self.settings.redis_timeout):
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(self.settings.node_key(self.settings.node_id))
                for device_id, value in self.router.presence().items():
                    await self._release(keys=[self.settings.presence_key(device_id)],
                                        args=[value], client=pipe)
                await pipe.execute()
        for client in (self.client, self._raw):
            with contextlib.suppress(*_FAILURES):
                async with asyncio.timeout(self.settings.redis_timeout):
                    await client.aclose()

    # -- health ------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        self.last_error = f"{what}: {type(exc).__name__}: {str(exc)[:160]}"
        if not self._reported_down:
            self._reported_down = True
            self.outages += 1
            logger.warning("redis unreachable (%s): degraded, serving this node's cameras and"
                           " viewers only", self.last_error)

    def _maybe_back(self) -> None:
        if self._reported_down and not self.degraded:
            self._reported_down = False
            logger.warning("redis reachable again: presence resynchronised (%d cameras)",
                           len(self.router.cameras))

    # -- actions -----------------------------------------------------------------------

    async def perform(self, action: Extension) -> None:
        if self._stopped:
            return
        if isinstance(action, Locate):
            await self._locate(action)
        elif isinstance(action, Publish):
            await self._publish(action)
        elif isinstance(action, Claim):
            await self._claim(action)
        elif isinstance(action, Release):
            with contextlib.suppress(*_FAILURES):
                await self._release(keys=[self.settings.presence_key(action.device_id)],
                                    args=[action.value])

    async def _locate(self, action: Locate) -> None:
        value = None
        try:
            value = await self.client.get(self.settings.presence_key(action.device_id))
        except _FAILURES as exc:
            self._failed("get", exc)
        loop = asyncio.get_running_loop()
        node = holder_node(value if isinstance(value, str) else None)
        await self._perform(self.router.located(action.peer, action.data, node, loop.time()))

    async def _publish(self, action: Publish) -> None:
        received = 0
        try:
            received = int(await self.client.publish(self.settings.channel(action.node),
                                                     encode_node(action.message)))
        except _FAILURES as exc:
            self._failed("publish", exc)
        if received == 0:
            self.published_unreceived += 1
            await self._perform(self.router.publish_failed(action))

    async def _claim(self, claim: Claim) -> None:
        proof = claim.proof
        lease_ms = int(self.settings.lease * 1000)
        try:
            result = await self._claim_script(
                keys=[self.settings.presence_key(proof.device_id)], args=[claim.value, lease_ms])
        except _FAILURES as exc:
            self._failed("claim", exc)  # the next renewal claims it
            return
        if result == 0:  # a newer registration holds it: this one is the older
            await self._perform(self.router.lost_presence(proof.device_id, claim.value))
            return
        old = result if isinstance(result, str) else None
        node = holder_node(old)
        if old is not None and node is not None and node != self.settings.node_id:
            await self._publish(Publish(node, Evict(
                self.settings.node_id, proof.device_id, old.partition("@")[0],
                proof.device_key, proof.nonce, proof.signature)))

    # -- loops -------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        loop = asyncio.get_running_loop()
        channel = self.settings.channel(self.settings.node_id)
        while True:
            pubsub = self._raw.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.settings.redis_timeout):
                    await pubsub.subscribe(channel)
                self._subscribed = True
                self._maybe_back()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    if isinstance(data, str | bytes):
                        await self._perform(self.router.from_node(data, loop.time()))
            except _FAILURES as exc:
                self._subscribed = False
                self._failed("subscribe", exc)
            finally:
                with contextlib.suppress(*_FAILURES):
                    async with asyncio.timeout(self.settings.redis_timeout):
                        await pubsub.aclose()
            await asyncio.sleep(1.0)

    async def _renew_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(max(self.settings.lease / 2, 1.0)):
                    await self._renew_once()
                self._renewed = True
                self._maybe_back()
            except _FAILURES as exc:
                self._renewed = False
                self._failed("renew", exc)
            await asyncio.sleep(self.settings.lease / 3)

    async def _renew_once(self) -> None:
        """Renew (or re-create) every local camera's presence and this node's key;
        settle cameras another node took; end sessions with nodes that are gone."""
        lease_ms = int(self.settings.lease * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.settings.node_key(self.settings.node_id), "1", px=lease_ms)
        # Loaded here, so that a claim (a new camera's first Redis command) is one
        # round trip, also on a Redis that restarted empty.
        pipe.script_load(_CLAIM)
        pipe.script_load(_RELEASE)
        await pipe.execute()
        items = list(self.router.presence().items())
        lost: list[tuple[str, str]] = []
        for start in range(0, len(items), BATCH):
            batch = items[start:start + BATCH]
            pipe = self.client.pipeline(transaction=False)
            for device_id, value in batch:
                # The same compare-and-set as a claim: a renewal that runs before
                # its registration's claim (or after it failed) claims the key from
                # an older registration; one from a registration that is no longer
                # the newest changes nothing.
                await self._claim_script(keys=[self.settings.presence_key(device_id)],
                                         args=[value, lease_ms], client=pipe)
            results = await pipe.execute()
            lost += [item for item, result in zip(batch, results, strict=True)
                     if result == 0]
        for device_id, value in lost:
            await self._perform(self.router.lost_presence(device_id, value))
        nodes = sorted(self.router.nodes_in_use())
        if not nodes:
            self._missing.clear()
            return
        pipe = self.client.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(self.settings.node_key(node))
        present = await pipe.execute()
        gone: set[str] = set()
        for node, exists in zip(nodes, present, strict=True):
            if exists:
                self._missing.pop(node, None)
                continue
            self._missing[node] = self._missing.get(node, 0) + 1
            if self._missing[node] >= MISSING_CHECKS:
                gone.add(node)
                del self._missing[node]
        if gone:
            logger.warning("node(s) %s gone: ending their sessions", ", ".join(sorted(gone)))
            await self._perform(self.router.nodes_gone(gone))
