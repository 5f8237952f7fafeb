"""A small typed client for the Toxiproxy HTTP API (the embedded server or a real Toxiproxy).

Every call has a timeout, errors raise :class:`ToxiproxyError` with the server's message, toxic
attributes are sent as real integers (Toxiproxy refuses ``100.0``), and values that stall or crash
a real Toxiproxy (bandwidth ``rate <= 0``, bad slicer sizes) are refused before sending. Updates
use ``POST``, which every Toxiproxy version accepts (``PATCH`` only exists since 2.6.0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from celery_chaos.errors import InfrastructureError

from .toxics import check_attributes


class ToxiproxyError(InfrastructureError):
    """An API call failed: ``status`` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        what = "unreachable" if status == 0 else f"HTTP {status}"
        super().__init__(f"Toxiproxy API error ({what}): {message}")


@dataclass(frozen=True)
class ToxicInfo:
    """A toxic as the API reports it."""

    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToxicInfo:
        return cls(
            name=data["name"],
            type=data["type"],
            stream=data.get("stream", "downstream"),
            toxicity=float(data.get("toxicity", 1.0)),
            attributes=dict(data.get("attributes") or {}),
        )


@dataclass(frozen=True)
class ProxyInfo:
    """A proxy as the API reports it; ``listen`` is the bound address once started."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[ToxicInfo, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProxyInfo:
        return cls(
            name=data["name"],
            listen=data["listen"],
            upstream=data["upstream"],
            enabled=bool(data["enabled"]),
            toxics=tuple(ToxicInfo.from_json(t) for t in data.get("toxics") or ()),
        )

    @property
    def listen_host(self) -> str:
        """Host part of ``listen`` (brackets stripped); never compare it as a string."""
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def _int_attributes(attributes: Mapping[str, Any] | None) -> dict[str, int]:
    """Toxiproxy decodes attributes into Go integers: send ``int`` s, refuse anything else."""
    out: dict[str, int] = {}
    for key, value in (attributes or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"toxic attribute {key}={value!r} must be an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"toxic attribute {key}={value!r} must be an integer")
            value = int(value)
        out[key] = value
    return out


def _check_update(attributes: Mapping[str, int]) -> None:
    if "rate" in attributes and attributes["rate"] <= 0:
        raise ValueError("bandwidth rate must be > 0 (real Toxiproxy stalls on 0, crashes below)")
    if "average_size" in attributes and attributes["average_size"] <= 0:
        raise ValueError("slicer average_size must be > 0 (real Toxiproxy crashes on 0)")


def parse_version(body: bytes) -> str:
    """The version from ``{"version": "2.12.0"}`` (>= 2.7.0) or a plain ``2.1.4`` (<= 2.5.0)."""
    text = body.decode("utf-8", "replace").strip()
    if text.endswith("\\n"):  # 2.6.0 sent a literal backslash-n
        text = text[:-2].strip()
    try:
        data = json.loads(text)
    except ValueError:
        match = re.search(r'"version"\s*:\s*"([^"]*)"', text)
        return match.group(1) if match else text
    if isinstance(data, dict) and "version" in data:
        return str(data["version"])
    return str(data)


class ToxiproxyClient:
    """Typed access to a Toxiproxy API at ``base_url``; each request times out after ``timeout``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8474", timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    # ----- plumbing
    def _request(self, method: str, path: str, body: Any = None) -> requests.Response:
        url = self.base_url + path
        try:
            resp = self._session.request(
                method,
                url,
                data=None if body is None else json.dumps(body),
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise ToxiproxyError(0, f"{method} {url}: {exc}") from None
        if resp.status_code >= 400:
            raise ToxiproxyError(resp.status_code, self._message(resp))
        return resp

    @staticmethod
    def _message(resp: requests.Response) -> str:
        try:
            data = resp.json()
        except ValueError:
            return resp.text.strip() or resp.reason or "no details"
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
        return resp.text.strip()

    @staticmethod
    def _p(name: str) -> str:
        return quote(name, safe="")

    # ----- proxies
    def create_proxy(
        self, name: str, listen: str, upstream: str, enabled: bool = True
    ) -> ProxyInfo:
        """Create a proxy; ``listen="127.0.0.1:0"`` picks a free port (read it from the result)."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return ProxyInfo.from_json(self._request("POST", "/proxies", body).json())

    def get_proxy(self, name: str) -> ProxyInfo:
        return ProxyInfo.from_json(self._request("GET", f"/proxies/{self._p(name)}").json())

    def list_proxies(self) -> dict[str, ProxyInfo]:
        data = self._request("GET", "/proxies").json()
        return {name: ProxyInfo.from_json(p) for name, p in data.items()}

    def update_proxy(
        self,
        name: str,
        *,
        listen: str | None = None,
        upstream: str | None = None,
        enabled: bool | None = None,
    ) -> ProxyInfo:
        """Change some fields; a new listen or upstream drops the proxy's connections."""
        body: dict[str, Any] = {}
        if listen is not None:
            body["listen"] = listen
        if upstream is not None:
            body["upstream"] = upstream
        if enabled is not None:
            body["enabled"] = enabled
        return ProxyInfo.from_json(self._request("POST", f"/proxies/{self._p(name)}", body).json())

    def enable_proxy(self, name: str) -> ProxyInfo:
        return self.update_proxy(name, enabled=True)

    def disable_proxy(self, name: str) -> ProxyInfo:
        """Stop listening (connects are refused) and close every open connection."""
        return self.update_proxy(name, enabled=False)

    @contextmanager
    def down(self, name: str) -> Iterator[ProxyInfo]:
        """Disable the proxy for the duration of the block, re-enable it afterwards."""
        info = self.disable_proxy(name)
        try:
            yield info
        finally:
            self.enable_proxy(name)

    def delete_proxy(self, name: str) -> None:
        self._request("DELETE", f"/proxies/{self._p(name)}")

    def populate(self, proxies: Iterable[Mapping[str, Any] | ProxyInfo]) -> list[ProxyInfo]:
        """Create or replace proxies in one call; identical ones (use IP literals) are kept."""
        body = []
        for p in proxies:
            if isinstance(p, ProxyInfo):
                body.append(
                    {
                        "name": p.name,
                        "listen": p.listen,
                        "upstream": p.upstream,
                        "enabled": p.enabled,
                    }
                )
            else:
                body.append(dict(p))
        data = self._request("POST", "/populate", body).json()
        return [ProxyInfo.from_json(p) for p in data.get("proxies") or []]

    # ----- toxics
    def add_toxic(
        self,
        proxy: str,
        type: str,
        attributes: Mapping[str, Any] | None = None,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> ToxicInfo:
        """Add a toxic; the default name is ``<type>_<stream>``."""
        attrs = _int_attributes(attributes)
        problem = check_attributes(type, attrs)
        if problem:
            raise ValueError(problem)
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": float(toxicity),
            "attributes": attrs,
        }
        if name:
            body["name"] = name
        path = f"/proxies/{self._p(proxy)}/toxics"
        return ToxicInfo.from_json(self._request("POST", path, body).json())

    def get_toxic(self, proxy: str, name: str) -> ToxicInfo:
        path = f"/proxies/{self._p(proxy)}/toxics/{self._p(name)}"
        return ToxicInfo.from_json(self._request("GET", path).json())

    def update_toxic(
        self,
        proxy: str,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        toxicity: float | None = None,
    ) -> ToxicInfo:
        """Change some attributes (others keep their values) and/or the toxicity.

        The result is checked as a whole (the current toxic merged with ``attributes``), so
        an update that would crash a real Toxiproxy is refused here."""
        attrs = _int_attributes(attributes)
        _check_update(attrs)
        if attrs:
            current = self.get_toxic(proxy, name)
            problem = check_attributes(current.type, {**current.attributes, **attrs})
            if problem:
                raise ValueError(problem)
        body: dict[str, Any] = {"attributes": attrs}
        if toxicity is not None:
            body["toxicity"] = float(toxicity)
        path = f"/proxies/{self._p(proxy)}/toxics/{self._p(name)}"
        return ToxicInfo.from_json(self._request("POST", path, body).json())

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic; removing a ``timeout`` toxic closes the proxy's connections."""
        self._request("DELETE", f"/proxies/{self._p(proxy)}/toxics/{self._p(name)}")

    def list_toxics(self, proxy: str) -> list[ToxicInfo]:
        data = self._request("GET", f"/proxies/{self._p(proxy)}/toxics").json()
        return [ToxicInfo.from_json(t) for t in data]

    # ----- server
    def reset(self) -> None:
        """Re-enable every proxy and remove every toxic."""
        self._request("POST", "/reset")

    def version(self) -> str:
        return parse_version(self._request("GET", "/version").content)

    def ping(self) -> bool:
        """True when the API answers."""
        try:
            self.version()
        except ToxiproxyError:
            return False
        return True

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> ToxiproxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
