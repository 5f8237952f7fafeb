"""Fixtures: one embedded proxy server per session, an optional real Toxiproxy, local upstreams."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from celery_chaos.faults.proxy import ProxyServer, ToxiproxyClient

from .servers import TcpServer, blast, echo

#: Proxies the tests create start with this, so a shared real Toxiproxy is only cleaned of ours.
PREFIX = "cc_test_"
REAL_SKIP_REASON = (
    "TOXIPROXY_URL is not set: the contract suite runs against the embedded server only "
    "(set TOXIPROXY_URL=http://127.0.0.1:8474 to also check a real Toxiproxy >= 2.12)"
)


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[ProxyServer]:
    with ProxyServer() as server:
        yield server


@pytest.fixture(scope="session")
def embedded_url(embedded_server: ProxyServer) -> str:
    return embedded_server.url


def _cleanup(url: str, everything: bool) -> None:
    session = requests.Session()
    proxies = session.get(f"{url}/proxies", timeout=5).json()
    for name in proxies:
        if everything or name.startswith(PREFIX):
            session.delete(f"{url}/proxies/{requests.utils.quote(name, safe='')}", timeout=5)


@pytest.fixture(params=["embedded", "real"])
def api_url(request: pytest.FixtureRequest, embedded_url: str) -> Iterator[str]:
    """Base URL of the server under contract test; each test leaves it without test proxies."""
    if request.param == "real":
        url = os.environ.get("TOXIPROXY_URL", "").rstrip("/")
        if not url:
            pytest.skip(REAL_SKIP_REASON)
    else:
        url = embedded_url
    _cleanup(url, everything=request.param == "embedded")
    yield url
    _cleanup(url, everything=request.param == "embedded")


@pytest.fixture
def is_embedded(api_url: str, embedded_url: str) -> bool:
    return api_url == embedded_url


@pytest.fixture
def url(embedded_url: str) -> Iterator[str]:
    """The embedded server, emptied before and after the test (behaviour tests)."""
    _cleanup(embedded_url, everything=True)
    yield embedded_url
    _cleanup(embedded_url, everything=True)


@pytest.fixture
def client(url: str) -> Iterator[ToxiproxyClient]:
    with ToxiproxyClient(url, timeout=5.0) as c:
        yield c


@pytest.fixture
def echo_server() -> Iterator[TcpServer]:
    server = TcpServer(echo)
    yield server
    server.close()


@pytest.fixture
def blast_server() -> Iterator[TcpServer]:
    server = TcpServer(blast)
    yield server
    server.close()
