"""Proxies, their toxic collections and the proxy collection, with Toxiproxy's semantics."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import Any

from .link import Connection, split_host_port
from .toxics import Toxic

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


class ApiError(Exception):
    """An error with an HTTP status, rendered as ``{"error": message, "status": status}``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InternalError(Exception):
    """An error Toxiproxy reports as 500 with the Go error text (bind and resolve failures)."""


def proxy_not_found() -> ApiError:
    return ApiError("proxy not found", 404)


def toxic_not_found() -> ApiError:
    return ApiError("toxic not found", 404)


# --------------------------------------------------------------------------- addresses


def tcp_addr_string(ip: str, port: int) -> str:
    """Go's ``TCPAddr.String()``: ``1.2.3.4:5``, ``[::1]:5``, ``:5`` for no IP."""
    if not ip:
        return f":{port}"
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def resolve_tcp_addr(address: str) -> tuple[str, int]:
    """Like Go's ``net.ResolveTCPAddr("tcp", address)``: ``(ip or "", port)``; ValueError on error.

    ``localhost`` resolves to ``127.0.0.1`` (Go prefers IPv4); other names use getaddrinfo.
    """
    if address == "":
        return "", 0
    host, port = split_host_port(address)
    if host == "":
        return "", port
    if host == "localhost":
        return "127.0.0.1", port
    try:
        return ipaddress.ip_address(host).compressed, port
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"lookup {host}: no such host") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0]), port


async def canonical_listen(address: str) -> str:
    """The string Toxiproxy compares stored ``listen`` values against."""
    ip, port = await resolve_tcp_addr(address)
    return tcp_addr_string(ip, port)


def _bind(ip: str, port: int) -> socket.socket:
    """Bind a listening socket like Go: a wildcard address is dual-stack ``[::]`` when possible."""
    candidates: list[tuple[socket.AddressFamily, str]]
    if ip in ("", "0.0.0.0", "::"):
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
        if not socket.has_ipv6:
            candidates = candidates[1:]
    else:
        candidates = [(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)]
    last: OSError | None = None
    for family, host in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # no IPv6 in this kernel
            last = exc
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            reason = (exc.strerror or str(exc)).lower()
            raise InternalError(f"listen tcp {tcp_addr_string(ip, port)}: bind: {reason}") from None
    raise InternalError(f"listen tcp {tcp_addr_string(ip, port)}: {last}")


# --------------------------------------------------------------------------- toxics


class ToxicCollection:
    """A proxy's toxics: one ordered chain per direction, applied to every live connection."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.chains: dict[str, list[Toxic]] = {"upstream": [], "downstream": []}

    def chain(self, direction: str) -> list[Toxic]:
        return self.chains[direction]

    def all(self) -> list[Toxic]:
        """Upstream toxics then downstream toxics, each in insertion order."""
        return self.chains["upstream"] + self.chains["downstream"]

    def find(self, name: str) -> Toxic | None:
        for toxic in self.all():
            if toxic.name == name:
                return toxic
        return None

    def add(self, toxic: Toxic) -> None:
        self.chains[toxic.direction].append(toxic)
        for conn in list(self.proxy.connections):
            conn.add_toxic(toxic)

    def update(self, toxic: Toxic, attributes: dict[str, int], toxicity: float) -> None:
        toxic.attributes = attributes
        toxic.toxicity = toxicity
        for conn in list(self.proxy.connections):
            conn.update_toxic(toxic)

    async def remove(self, toxic: Toxic) -> None:
        chain = self.chains[toxic.direction]
        if toxic in chain:
            chain.remove(toxic)
        conns = list(self.proxy.connections)
        if conns:
            await asyncio.gather(*(conn.remove_toxic(toxic) for conn in conns))

    async def reset(self) -> None:
        for toxic in self.all():
            await self.remove(toxic)


# --------------------------------------------------------------------------- proxies


class Proxy:
    """A named listener that forwards every accepted connection to ``upstream``."""

    def __init__(self, name: str, listen: str, upstream: str) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics = ToxicCollection(self)
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    def to_json(self) -> dict[str, Any]:
        """The Proxy object in Toxiproxy's key order (``Logger`` leaks from Go; kept as is)."""
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "Logger": {},
            "toxics": [t.to_json() for t in self.toxics.all()],
        }

    async def start(self) -> None:
        """Bind ``listen`` (it becomes the bound address) and accept; InternalError on failure."""
        if self.enabled:
            raise ApiError("proxy already started", 409)
        try:
            ip, port = await resolve_tcp_addr(self.listen)
        except ValueError as exc:
            raise InternalError(f"listen tcp: {exc}") from None
        sock = _bind(ip, port)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: Connection(self, loop).client, sock=sock, backlog=LISTEN_BACKLOG
            )
        except OSError as exc:
            sock.close()
            raise InternalError(f"listen tcp {self.listen}: {exc}") from None
        host, bound_port = sock.getsockname()[:2]
        self.listen = tcp_addr_string(
            ipaddress.ip_address(host.split("%")[0]).compressed, bound_port
        )
        self.enabled = True
        log.info("started proxy %s on %s -> %s", self.name, self.listen, self.upstream)

    def stop(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        if not self.enabled:
            return
        self.enabled = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.abort()
        log.info("stopped proxy %s", self.name)

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        """Apply a proxy update: restart on a new listen/upstream, then enable or disable."""
        try:
            new_listen = await canonical_listen(listen)
        except ValueError as exc:
            raise InternalError(str(exc)) from None
        if self.listen != new_listen or self.upstream != upstream:
            self.stop()
            self.listen = listen
            self.upstream = upstream
        if enabled != self.enabled:
            if enabled:
                await self.start()
            else:
                self.stop()


class ProxyCollection:
    """All proxies by name. API handlers serialise changes with :attr:`lock`."""

    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise proxy_not_found() from None

    async def add(self, proxy: Proxy, start: bool) -> None:
        if proxy.name in self.proxies:
            raise ApiError("proxy already exists", 409)
        if start:
            await proxy.start()
        self.proxies[proxy.name] = proxy

    async def add_or_replace(self, proxy: Proxy, start: bool) -> Proxy:
        """Populate's rule: keep an identical proxy untouched, else stop it and put ``proxy``."""
        existing = self.proxies.get(proxy.name)
        if existing is not None:
            try:
                same_listen = existing.listen == await canonical_listen(proxy.listen)
            except ValueError:
                same_listen = False
            if same_listen and existing.upstream == proxy.upstream:
                return existing
            existing.stop()
        if start:
            await proxy.start()
        self.proxies[proxy.name] = proxy
        return proxy

    def remove(self, name: str) -> None:
        proxy = self.get(name)
        proxy.stop()
        del self.proxies[name]

    def shutdown(self) -> None:
        """Stop every proxy (used when the server exits)."""
        for proxy in list(self.proxies.values()):
            with contextlib.suppress(Exception):
                proxy.stop()
        self.proxies.clear()
