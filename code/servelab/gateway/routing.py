"""Which vLLM replica gets a request: round-robin, least-outstanding, or affinity; health checks.

The gateway holds one :class:`Router` (on ``app.state.router``, built in the app's ``lifespan``)::

    router = Router(["http://127.0.0.1:8000", "http://127.0.0.1:8001"], "least_outstanding", client)
    async with router.lease(key) as upstream:        # counts the request as outstanding on that replica
        response = await client.post(f"{upstream.url}/v1/completions", json=body)
    task = asyncio.create_task(router.check_health())  # takes a failed replica out, puts it back

* ``round_robin`` — the healthy replicas in turn.
* ``least_outstanding`` — the healthy replica with the fewest requests in flight *through this gateway*
  (ties in turn). It sees only this gateway's requests, not other gateways' or the queue inside vLLM.
* ``affinity`` — the same key goes to the same replica (rendezvous hashing of the key: a session id, or
  the prompt's prefix, see :func:`affinity_key`), so that replica's prefix cache already holds the shared
  prefix. When a replica goes out, only its keys move; when it comes back, they move back.

A replica is taken out when its ``GET /health`` fails ``fail_after`` times in a row (or at once, when a
request through :meth:`Router.lease` cannot even connect to it), and put back after ``recover_after``
good answers in a row. :meth:`Router.pick` raises :class:`NoHealthyUpstream` when none is left (the app
answers 503).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

POLICIES = ("round_robin", "least_outstanding", "affinity")
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)  # nothing reached the replica


class NoHealthyUpstream(RuntimeError):
    """Every replica is out (the gateway answers 503 with ``Retry-After``)."""


@dataclass
class Upstream:
    """One vLLM replica as the router sees it."""

    url: str  # base URL, e.g. http://127.0.0.1:8000 (no /v1)
    outstanding: int = 0  # requests in flight through this gateway
    healthy: bool = True
    served: int = 0  # requests routed here since start
    failures: int = 0  # failed health checks in a row
    successes: int = 0  # good health checks in a row (while out)
    last_error: str | None = None
    changed_at: float = field(default_factory=time.monotonic)  # when healthy last flipped

    def snapshot(self) -> dict:
        return {"url": self.url, "healthy": self.healthy, "outstanding": self.outstanding,
                "served": self.served, "last_error": self.last_error}


# --8<-- [start:affinity_key]
def affinity_key(body: dict, session: str | None = None, prefix_chars: int = 256) -> str | None:
    """The key that keeps a conversation on one replica: a session id if the caller sent one, else the
    beginning of the prompt (system prompt and first messages), which is what the prefix cache reuses."""
    if session:
        return f"session:{session}"
    if "messages" in body:
        text = json.dumps(body["messages"], ensure_ascii=False, sort_keys=True)
    else:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else json.dumps(prompt) if prompt else ""
    return f"prefix:{text[:prefix_chars]}" if text else None
# --8<-- [end:affinity_key]


def _score(key: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest(), "big")


class Router:
    """Picks a replica per request and keeps track of which replicas are healthy."""

    def __init__(self, upstreams: Sequence[str], policy: str = "round_robin",
                 client: httpx.AsyncClient | None = None, *, health_path: str = "/health",
                 health_interval_s: float = 5.0, health_timeout_s: float = 2.0,
                 fail_after: int = 1, recover_after: int = 1) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}: choose one of {', '.join(POLICIES)}")
        if not upstreams:
            raise ValueError("the router needs at least one upstream URL")
        self.upstreams = [Upstream(url.rstrip("/")) for url in upstreams]
        self.policy = policy
        self.client = client
        self.health_path = health_path
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.fail_after, self.recover_after = fail_after, recover_after
        self._turn = itertools.count()

    # --8<-- [start:pick]
    def healthy(self) -> list[Upstream]:
        return [u for u in self.upstreams if u.healthy]

    def pick(self, key: str | None = None) -> Upstream:
        """The replica for the next request (``key``: see :func:`affinity_key`; ignored by the others)."""
        candidates = self.healthy()
        if not candidates:
            raise NoHealthyUpstream("no healthy upstream: " + ", ".join(
                f"{u.url} ({u.last_error or 'down'})" for u in self.upstreams))
        if self.policy == "affinity" and key is not None:
            return max(candidates, key=lambda u: _score(key, u.url))  # (1)!
        turn = next(self._turn)
        if self.policy == "least_outstanding":
            fewest = min(u.outstanding for u in candidates)
            candidates = [u for u in candidates if u.outstanding == fewest]  # (2)!
        return candidates[turn % len(candidates)]

    @asynccontextmanager
    async def lease(self, key: str | None = None) -> AsyncIterator[Upstream]:
        """Pick a replica and count the request as outstanding there until the block ends (for a stream:
        until its last byte)."""
        upstream = self.pick(key)
        upstream.outstanding += 1
        upstream.served += 1
        try:
            yield upstream
        except CONNECT_ERRORS as error:  # (3)!
            self.mark_down(upstream, f"{type(error).__name__}: {error}")
            raise
        finally:
            upstream.outstanding -= 1
    # --8<-- [end:pick]

    # --8<-- [start:health]
    def mark_down(self, upstream: Upstream, reason: str) -> None:
        if upstream.healthy:
            upstream.healthy, upstream.changed_at = False, time.monotonic()
        upstream.last_error, upstream.successes = reason, 0

    async def probe(self, upstream: Upstream) -> bool:
        """One health check: ``GET /health`` answered 200 in time."""
        client = self.client or httpx.AsyncClient()
        try:
            response = await client.get(upstream.url + self.health_path, timeout=self.health_timeout_s)
            ok, reason = response.status_code == 200, f"/health answered {response.status_code}"
        except httpx.HTTPError as error:
            ok, reason = False, f"{type(error).__name__}: {error}"
        finally:
            if client is not self.client:
                await client.aclose()
        if ok:
            upstream.failures = 0
            upstream.successes += 1
            if not upstream.healthy and upstream.successes >= self.recover_after:
                upstream.healthy, upstream.changed_at, upstream.last_error = True, time.monotonic(), None
        else:
            upstream.successes = 0
            upstream.failures += 1
            upstream.last_error = reason
            if upstream.healthy and upstream.failures >= self.fail_after:
                self.mark_down(upstream, reason)
        return ok

    async def check_once(self) -> list[dict]:
        """Probe every replica at once; returns each one's state."""
        await asyncio.gather(*(self.probe(u) for u in self.upstreams))
        return [u.snapshot() for u in self.upstreams]

    async def check_health(self, interval_s: float | None = None) -> None:
        """The health-check loop (run it as a task; cancel it on shutdown)."""
        while True:
            await self.check_once()
            await asyncio.sleep(interval_s or self.health_interval_s)
    # --8<-- [end:health]

    @property
    def ready(self) -> bool:
        return any(u.healthy for u in self.upstreams)

    def snapshot(self) -> list[dict]:
        return [u.snapshot() for u in self.upstreams]
