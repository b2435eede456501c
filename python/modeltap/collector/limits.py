"""Room of its own for each class of long-lived call: at most so many at
once in all and from one host (``PeerLimit``: Watch and Query streams,
refused past it), rooms a call waits for (``Rooms``: Export messages being
received), and the health service with its Watch streams bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from modeltap.collector.store import Overloaded

Code = grpc.StatusCode


def peer_host(peer: str) -> str:
    """The host of a grpc peer string (``ipv4:127.0.0.1:5000``,
    ``ipv6:[::1]:5000``, ``unix:/path``): calls from one host share its
    limits."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer


class _HostCounts:
    """What is open, in all and by host."""

    def __init__(self, what: str, total: int, per_peer: int) -> None:
        self.what = what
        self.total = total
        self.per_peer = max(1, min(per_peer, total))
        self.open = 0
        self._by_peer: dict[str, int] = {}

    def _free(self, host: str) -> bool:
        return self.open < self.total and self._by_peer.get(host, 0) < self.per_peer

    def _take(self, host: str) -> None:
        self.open += 1
        self._by_peer[host] = self._by_peer.get(host, 0) + 1

    def _give_back(self, host: str) -> None:
        self.open -= 1
        left = self._by_peer.get(host, 1) - 1
        if left > 0:
            self._by_peer[host] = left
        else:
            self._by_peer.pop(host, None)

    def _full(self, host: str, state: str = "") -> str:
        """What is open, said for a refusal."""
        mine = self._by_peer.get(host, 0)
        return (
            f"{self.open} {self.what}{state} ({mine} from {host}; at most {self.total}, "
            f"{self.per_peer} from one host)"
        )


class PeerLimit(_HostCounts):
    """At most ``total`` of one kind of long-lived call at once, at most
    ``per_peer`` of them from one host (event-loop only: no lock)."""

    def __init__(self, what: str, total: int, per_peer: int) -> None:
        super().__init__(what, total, per_peer)
        self.refused = 0

    def enter(self, peer: str) -> None:
        """Counts one in; raises ``Overloaded`` past either bound."""
        host = peer_host(peer)
        if not self._free(host):
            self.refused += 1
            raise Overloaded(self._full(host, " open"))
        self._take(host)

    def leave(self, peer: str) -> None:
        self._give_back(peer_host(peer))


class Rooms(_HostCounts):
    """At most ``total`` holders at once, at most ``per_peer`` from one host;
    a caller waits (bounded, first come first served) for a free one.
    Event-loop only; ``leave`` is synchronous, so a cancelled call always
    gives its room back."""

    def __init__(self, what: str, total: int, per_peer: int) -> None:
        if total < 1:
            raise ValueError(f"{what}: at least 1, not {total}")
        super().__init__(what, total, per_peer)
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []

    async def enter(self, peer: str, wait_s: float) -> None:
        """Takes a room, waiting up to ``wait_s`` for one; raises
        ``Overloaded`` if none came free."""
        host = peer_host(peer)
        # No waiter is ever left that a free room would fit (leave hands
        # each room on at once), so a caller that fits takes one now.
        if self._free(host):
            self._take(host)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (host, granted)
        self._waiting.append(entry)
        try:
            await asyncio.wait({granted}, timeout=wait_s)
        except BaseException:  # the call cancelled while it waited
            if granted.done():
                self.leave(peer)  # granted just then: pass it on
            else:
                granted.cancel()
                self._waiting.remove(entry)
            raise
        if not granted.done():
            granted.cancel()
            self._waiting.remove(entry)
            raise Overloaded(f"{self._full(host)}, none free in {wait_s:.1f} s")

    def leave(self, peer: str) -> None:
        """Gives a room back, to the first waiter that may take it."""
        self._give_back(peer_host(peer))
        for entry in list(self._waiting):
            host, granted = entry
            if self._free(host):
                self._waiting.remove(entry)
                self._take(host)
                granted.set_result(None)


class BoundedHealth(health_aio.HealthServicer):
    """The standard health service with its Watch streams bounded (in all
    and per host); Check is never refused."""

    def __init__(self, limit: PeerLimit) -> None:
        super().__init__()
        self.limit = limit

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        peer = context.peer()
        try:
            self.limit.enter(peer)
        except Overloaded as e:
            await context.abort(Code.RESOURCE_EXHAUSTED, f"{e}: poll with Check instead")
        try:
            await super().Watch(request, context)
        finally:
            self.limit.leave(peer)
