"""Embedded Toxiproxy-compatible fault proxy, and a typed client for any Toxiproxy API.

Server side: :func:`run` (foreground) and :class:`ProxyServer` (background thread). Client side:
:class:`ToxiproxyClient`, which works against this server and a real Toxiproxy alike.
"""

from .client import ProxyInfo, ToxicInfo, ToxiproxyClient, ToxiproxyError
from .server import VERSION, ProxyServer, run

__all__ = [
    "VERSION",
    "ProxyInfo",
    "ProxyServer",
    "ToxicInfo",
    "ToxiproxyClient",
    "ToxiproxyError",
    "run",
]
