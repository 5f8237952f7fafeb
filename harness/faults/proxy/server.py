"""The Toxiproxy-compatible HTTP API (aiohttp) and the two ways to run it.

* :func:`run` serves in the foreground until SIGINT/SIGTERM (the CLI's entry point).
* :class:`ProxyServer` serves from a background thread of the calling process (tests, harness).

Routes, status codes, bodies and headers follow Toxiproxy 2.12's documented HTTP API and what
its server does. The TCP proxying itself lives in :mod:`.link`, proxies and toxic chains in
:mod:`.proxies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from celery_chaos.errors import InfrastructureError, UsageError

from .gojson import DecodeError, decode_struct, dumps, json_kind, loads_first
from .proxies import (
    ApiError,
    InternalError,
    Proxy,
    ProxyCollection,
    toxic_not_found,
)
from .toxics import GO_STRUCTS, TOXIC_FIELDS, Toxic, check_attributes

#: Reported by ``GET /version``: the Toxiproxy release whose API this server follows.
VERSION = "2.12.0+embedded"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8474
HANDLER_TIMEOUT = 25.0  # Go's http.TimeoutHandler: 503 after this many seconds
#: aiohttp's request body limit; 0 is none. Toxiproxy reads bodies of any size (aiohttp would
#: answer 413 above 1 MiB by default, e.g. for a /populate of many proxies).
CLIENT_MAX_SIZE = 0

COLLECTION: web.AppKey[ProxyCollection] = web.AppKey("collection", ProxyCollection)
TIMEOUT: web.AppKey[float] = web.AppKey("handler_timeout", float)

_PROXY_FIELDS = {"name": "string", "listen": "string", "upstream": "string", "enabled": "bool"}
_WRAPPER_FIELDS = {
    "name": "string",
    "type": "string",
    "stream": "string",
    "toxicity": "float32",
    "attributes": "object",
}
_UPDATE_FIELDS = {"attributes": "object", "toxicity": "float32"}
_XID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- responses


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj).encode(), status=status, content_type="application/json")


def _plain(status: int, text: str) -> web.Response:
    return web.Response(
        body=text.encode(),
        status=status,
        headers={"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"},
    )


def _error(message: str, status: int) -> web.Response:
    """Toxiproxy's error body: JSON plus a newline, sent as text/plain by Go's http.Error."""
    return _plain(status, dumps({"error": message, "status": status}) + "\n")


def _populate_response(error: ApiError | None, proxies: list[Proxy]) -> web.Response:
    body: dict[str, Any] = {}
    if error is not None:
        body.update(error=error.message, status=error.status)
    body["proxies"] = [p.to_json() for p in proxies] or None
    return _json(body, error.status if error is not None else 201)


# --------------------------------------------------------------------------- decoding


async def _body(request: web.Request) -> Any:
    try:
        return loads_first(await request.read())
    except DecodeError as exc:
        raise ApiError(f"bad request body: {exc}", 400) from None


def _decode(
    value: Any, fields: dict[str, str], go_type: str, base: dict[str, Any]
) -> dict[str, Any]:
    try:
        return decode_struct(value, fields, go_type, base)
    except DecodeError as exc:
        raise ApiError(f"bad request body: {exc}", 400) from None


def _find_toxic(proxy: Proxy, name: str) -> Toxic:
    toxic = proxy.toxics.find(name)
    if toxic is None:
        raise toxic_not_found()
    return toxic


# --------------------------------------------------------------------------- handlers


async def _index(request: web.Request) -> web.Response:
    proxies = request.app[COLLECTION].proxies
    return _json({name: proxies[name].to_json() for name in sorted(proxies)})


async def _create(request: web.Request) -> web.Response:
    coll = request.app[COLLECTION]
    base = {"name": "", "listen": "", "upstream": "", "enabled": True}
    data = _decode(await _body(request), _PROXY_FIELDS, "toxiproxy.Proxy", base)
    if not data["name"]:
        raise ApiError("missing required field: name", 400)
    if not data["upstream"]:
        raise ApiError("missing required field: upstream", 400)
    async with coll.lock:
        proxy = Proxy(data["name"], data["listen"], data["upstream"])
        await coll.add(proxy, data["enabled"])
    return _json(proxy.to_json(), 201)


async def _populate(request: web.Request) -> web.Response:
    coll = request.app[COLLECTION]
    try:
        body = loads_first(await request.read())
        if body is not None and not isinstance(body, list):
            raise DecodeError(
                f"json: cannot unmarshal {json_kind(body).split(' ')[0]} into Go value of type "
                '[]struct { toxiproxy.Proxy; Enabled *bool "json:\\"enabled\\"" }'
            )
        base = {"name": "", "listen": "", "upstream": "", "enabled": None}
        entries = [decode_struct(e, _PROXY_FIELDS, "toxiproxy.Proxy", base) for e in body or []]
    except DecodeError as exc:
        return _populate_response(ApiError(f"bad request body: {exc}", 400), [])
    for i, entry in enumerate(entries, start=1):
        for required in ("name", "upstream"):
            if not entry[required]:
                msg = f"missing required field: {required} at proxy {i}"
                return _populate_response(ApiError(msg, 400), [])
    done: list[Proxy] = []
    async with coll.lock:
        for entry in entries:
            enabled = True if entry["enabled"] is None else entry["enabled"]
            proxy = Proxy(entry["name"], entry["listen"], entry["upstream"])
            try:
                done.append(await coll.add_or_replace(proxy, enabled))
            except ApiError as exc:
                return _populate_response(exc, done)
            except InternalError as exc:
                return _populate_response(ApiError(str(exc), 500), done)
    return _populate_response(None, done)


async def _show(request: web.Request) -> web.Response:
    proxy = request.app[COLLECTION].get(request.match_info["proxy"])
    return _json(proxy.to_json())


async def _update(request: web.Request) -> web.Response:
    coll, name = request.app[COLLECTION], request.match_info["proxy"]
    coll.get(name)
    body = await _body(request)
    async with coll.lock:
        proxy = coll.get(name)
        base = {
            "name": proxy.name,
            "listen": proxy.listen,
            "upstream": proxy.upstream,
            "enabled": proxy.enabled,
        }
        data = _decode(body, _PROXY_FIELDS, "toxiproxy.Proxy", base)
        await proxy.update(data["listen"], data["upstream"], data["enabled"])
    return _json(proxy.to_json())


async def _delete(request: web.Request) -> web.Response:
    coll = request.app[COLLECTION]
    async with coll.lock:
        coll.remove(request.match_info["proxy"])
    return web.Response(status=204)


async def _toxic_index(request: web.Request) -> web.Response:
    proxy = request.app[COLLECTION].get(request.match_info["proxy"])
    return _json([t.to_json() for t in proxy.toxics.all()])


async def _toxic_create(request: web.Request) -> web.Response:
    coll, name = request.app[COLLECTION], request.match_info["proxy"]
    coll.get(name)
    base = {"name": "", "type": "", "stream": "downstream", "toxicity": 1.0, "attributes": None}
    wrapper = _decode(await _body(request), _WRAPPER_FIELDS, "toxics.ToxicWrapper", base)
    direction = wrapper["stream"].lower()
    if direction not in ("upstream", "downstream"):
        raise ApiError("stream was invalid, can be either upstream or downstream", 400)
    toxic_type = wrapper["type"]
    toxic_name = wrapper["name"] or f"{toxic_type}_{wrapper['stream']}"
    if toxic_type not in TOXIC_FIELDS:
        raise ApiError("invalid toxic type", 400)
    async with coll.lock:
        proxy = coll.get(name)
        if proxy.toxics.find(toxic_name) is not None:
            raise ApiError("toxic already exists", 409)
        fields = TOXIC_FIELDS[toxic_type]
        attrs = _decode(
            wrapper["attributes"], fields, GO_STRUCTS[toxic_type], dict.fromkeys(fields, 0)
        )
        problem = check_attributes(toxic_type, attrs)
        if problem:
            raise ApiError(problem, 400)
        toxic = Toxic(
            toxic_name, toxic_type, wrapper["stream"], direction, wrapper["toxicity"], attrs
        )
        proxy.toxics.add(toxic)
    return _json(toxic.to_json())


async def _toxic_show(request: web.Request) -> web.Response:
    proxy = request.app[COLLECTION].get(request.match_info["proxy"])
    return _json(_find_toxic(proxy, request.match_info["toxic"]).to_json())


async def _toxic_update(request: web.Request) -> web.Response:
    coll, name, toxic_name = (
        request.app[COLLECTION],
        request.match_info["proxy"],
        request.match_info["toxic"],
    )
    _find_toxic(coll.get(name), toxic_name)
    body = await _body(request)
    async with coll.lock:
        proxy = coll.get(name)
        toxic = _find_toxic(proxy, toxic_name)
        base = {"attributes": None, "toxicity": toxic.toxicity}
        update = _decode(body, _UPDATE_FIELDS, "struct", base)
        attrs = _decode(
            update["attributes"],
            TOXIC_FIELDS[toxic.type],
            GO_STRUCTS[toxic.type],
            dict(toxic.attributes),
        )
        problem = check_attributes(toxic.type, attrs)
        if problem:
            raise ApiError(problem, 400)
        proxy.toxics.update(toxic, attrs, update["toxicity"])
    return _json(toxic.to_json())


async def _toxic_delete(request: web.Request) -> web.Response:
    coll = request.app[COLLECTION]
    async with coll.lock:
        proxy = coll.get(request.match_info["proxy"])
        await proxy.toxics.remove(_find_toxic(proxy, request.match_info["toxic"]))
    return web.Response(status=204)


async def _reset(request: web.Request) -> web.Response:
    coll = request.app[COLLECTION]
    async with coll.lock:
        for proxy in list(coll.proxies.values()):
            if not proxy.enabled:
                await proxy.start()
            await proxy.toxics.reset()
    return web.Response(status=204)


async def _version(request: web.Request) -> web.Response:
    body = f'{{"version": "{VERSION}"}}\n'.encode()
    return web.Response(body=body, headers={"Content-Type": "application/json;charset=utf-8"})


async def _guarded(handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.message, exc.status)
    except InternalError as exc:
        return _error(str(exc), 500)
    except web.HTTPException as exc:
        return _error(exc.reason, exc.status)
    except Exception as exc:  # noqa: BLE001 - Go turns any other error into a 500
        return _error(str(exc) or type(exc).__name__, 500)


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Router errors as gorilla/mux sends them; browser block, request id and handler timeout.

    A handler still running after the app's timeout (Go's 25 s ``http.TimeoutHandler``) is
    answered 503 with an empty body; like Go's, the handler itself goes on in the background.
    """
    http_exception = request.match_info.http_exception
    if http_exception is not None:
        if http_exception.status == 405:
            return web.Response(status=405)
        return _plain(404, "404 page not found\n")
    request_id = "".join(random.choices(_XID_ALPHABET, k=20))
    response: web.StreamResponse
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        response = _plain(403, "User agent not allowed\n")
    else:
        task = asyncio.ensure_future(_guarded(handler, request))
        done, _ = await asyncio.wait({task}, timeout=request.app[TIMEOUT])
        response = task.result() if done else web.Response(status=503)
    response.headers["X-Toxiproxy-Request-Id"] = request_id
    return response


def make_app(
    collection: ProxyCollection | None = None, handler_timeout: float = HANDLER_TIMEOUT
) -> web.Application:
    """The aiohttp application serving the Toxiproxy API over ``collection``.

    ``handler_timeout`` (seconds) is Toxiproxy's fixed 25 s; tests shorten it to reach the 503.
    """
    app = web.Application(middlewares=[_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[COLLECTION] = collection if collection is not None else ProxyCollection()
    app[TIMEOUT] = handler_timeout
    add = app.router.add_route
    add("GET", "/proxies", _index)
    add("POST", "/proxies", _create)
    add("POST", "/populate", _populate)
    add("GET", "/proxies/{proxy}", _show)
    add("POST", "/proxies/{proxy}", _update)
    add("PATCH", "/proxies/{proxy}", _update)
    add("DELETE", "/proxies/{proxy}", _delete)
    add("GET", "/proxies/{proxy}/toxics", _toxic_index)
    add("POST", "/proxies/{proxy}/toxics", _toxic_create)
    add("GET", "/proxies/{proxy}/toxics/{toxic}", _toxic_show)
    add("POST", "/proxies/{proxy}/toxics/{toxic}", _toxic_update)
    add("PATCH", "/proxies/{proxy}/toxics/{toxic}", _toxic_update)
    add("DELETE", "/proxies/{proxy}/toxics/{toxic}", _toxic_delete)
    add("POST", "/reset", _reset)
    add("GET", "/version", _version)
    return app


# --------------------------------------------------------------------------- serving


def check_port(port: object) -> int:
    """Validate a port given by a user (int or digit string); UsageError otherwise."""
    text = str(port).strip()
    if isinstance(port, bool) or not text.isdigit() or not 0 <= int(text) <= 65535:
        raise UsageError(f"invalid port {port!r}: expected an integer from 0 to 65535")
    return int(text)


def _api_socket(host: str, port: int) -> socket.socket:
    """Bind the API's listening socket now, so errors surface as one-line ChaosErrors."""
    port = check_port(port)
    bind_host = "127.0.0.1" if host == "localhost" else host
    try:
        infos = socket.getaddrinfo(
            bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"invalid host {host!r}: {exc}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise InfrastructureError(
            f"cannot listen on {host}:{port}: {reason}; pick another port or stop what uses it"
        ) from None
    sock.setblocking(False)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"http://{host}:{port}"


async def _start_api(
    sock: socket.socket, collection: ProxyCollection, handler_timeout: float = HANDLER_TIMEOUT
) -> web.AppRunner:
    runner = web.AppRunner(
        make_app(collection, handler_timeout),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
    )
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


async def _stop_api(runner: web.AppRunner, collection: ProxyCollection) -> None:
    collection.shutdown()
    await runner.cleanup()
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=2.0)


def run(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
        config: list[dict[str, Any]] | None = None) -> None:
    """Serve the API in the foreground until SIGINT/SIGTERM; ``config``: proxies to create
    first (Toxiproxy's ``-config`` file: ``[{name, listen, upstream, enabled}]``).

    Raises :class:`UsageError` for a bad host or port and :class:`InfrastructureError` when the
    port cannot be bound; both carry a one-line message.
    """
    sock = _api_socket(host, port)

    async def main() -> None:
        collection = ProxyCollection()
        runner = await _start_api(sock, collection)
        for entry in config or []:
            await collection.add_or_replace(
                Proxy(entry["name"], entry.get("listen", ""), entry["upstream"]),
                entry.get("enabled", True) is not False,
            )
        print(f"toxiproxy-compatible API on {_url(host, sock)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await _stop_api(runner, collection)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


class ProxyServer:
    """The API and its proxies on an event loop in a background thread.

    >>> with ProxyServer() as server:   # port 0: an ephemeral port
    ...     url = server.url
    """

    def __init__(
        self, host: str = DEFAULT_HOST, port: int = 0, handler_timeout: float = HANDLER_TIMEOUT
    ) -> None:
        self.host = host
        self.port = port
        #: Seconds before a still-running API handler is answered 503 (Toxiproxy: 25).
        self.handler_timeout = handler_timeout
        self.url = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        #: The served proxies (owned by the server's loop; read-only from other threads).
        self.collection: ProxyCollection | None = None

    def start(self) -> str:
        """Bind, start serving, and return the base URL (``http://127.0.0.1:PORT``)."""
        if self._thread is not None:
            return self.url
        sock = _api_socket(self.host, self.port)
        self.url = _url(self.host, sock)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._main, args=(sock,), name=f"proxy-server:{self.port}", daemon=True
        )
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None or not self._ready.is_set():
            self.stop()
            raise InfrastructureError(f"proxy server failed to start: {self._error}")
        return self.url

    def _main(self, sock: socket.socket) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            collection = self.collection = ProxyCollection()
            try:
                runner = await _start_api(sock, collection, self.handler_timeout)
            except Exception as exc:  # noqa: BLE001 - reported to start()
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await _stop_api(runner, collection)

        try:
            asyncio.run(main())
        except Exception as exc:  # noqa: BLE001 - keep the thread quiet; start() reports
            self._error = exc
            print(f"proxy server stopped: {exc}", file=sys.stderr)

    def stop(self) -> None:
        """Stop the server, close every proxy and connection, and join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
        thread.join(10.0)

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
