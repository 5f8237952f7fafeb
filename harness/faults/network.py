"""Network faults on a deployment's links, through the Toxiproxy API only.

Each verb records a ``fault`` start record when applied and an end record when healed, so
reports can shade the window and checkers can measure recovery from the heal.

- ``partition(targets, mode)``: ``blackhole`` (a ``timeout`` toxic with timeout 0 on both
  streams: data is dropped, the connection stays open, a silent peer), ``refuse`` (the proxy
  is disabled: new connections are refused and open ones closed), ``reset`` (``reset_peer``
  with timeout 0: new connections are reset with a TCP RST; open ones are closed, which, as
  in Toxiproxy, is a plain FIN).
- ``latency(targets, ms, jitter)`` and ``bandwidth(targets, kb_per_s)`` on both streams.
- ``heal()``: removes every toxic and re-enables every proxy this injector touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.deployment.links import LinkProxies
from harness.history.schema import Kind
from harness.history.store import HistoryWriter

Mode = Literal["blackhole", "refuse", "reset"]
STREAMS = ("upstream", "downstream")


@dataclass
class _Open:
    name: str
    links: list[str]
    toxics: list[tuple[str, str]] = field(default_factory=list)  # (link, toxic name)
    disabled: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


class NetworkFaults:
    """Partition, slow down and heal links; every change is recorded in the history."""

    def __init__(self, links: LinkProxies, writer: HistoryWriter) -> None:
        self.links = links
        self.writer = writer
        self.open: list[_Open] = []

    @property
    def _api(self):  # type: ignore[no-untyped-def]
        assert self.links.client is not None
        return self.links.client

    def _begin(self, name: str, links: list[str], **detail: Any) -> _Open:
        fault = _Open(name, links, detail={"links": links, **detail})
        self.writer.write(
            Kind.FAULT, name=name, phase="start", target=",".join(links), detail=fault.detail
        )
        self.open.append(fault)
        return fault

    def _toxic(self, fault: _Open, link: str, type_: str, attrs: dict[str, int]) -> None:
        for stream in STREAMS:
            name = f"chaos_{fault.name}_{stream}_{len(self.open)}"
            self._api.add_toxic(link, type_, attrs, name=name, stream=stream)
            fault.toxics.append((link, name))

    def partition(self, targets: str | list[str], mode: Mode = "blackhole") -> None:
        """Cut the links named by ``targets`` (names or globs such as ``w*-broker``)."""
        if mode not in ("blackhole", "refuse", "reset"):
            raise ValueError(f"unknown partition mode {mode!r}: blackhole, refuse or reset")
        links = self.links.select(targets)
        fault = self._begin(f"partition_{mode}", links, mode=mode)
        for link in links:
            if mode == "refuse":
                self._api.disable_proxy(link)
                fault.disabled.append(link)
            elif mode == "blackhole":
                self._toxic(fault, link, "timeout", {"timeout": 0})
            else:
                self._toxic(fault, link, "reset_peer", {"timeout": 0})

    def latency(self, targets: str | list[str], ms: int, jitter: int = 0) -> None:
        """Add ``ms`` ± ``jitter`` milliseconds to both directions of each link."""
        if ms < 0 or jitter < 0:
            raise ValueError(f"latency {ms} ms ± {jitter} ms: both must be 0 or more")
        links = self.links.select(targets)
        fault = self._begin("latency", links, latency_ms=ms, jitter_ms=jitter)
        for link in links:
            self._toxic(fault, link, "latency", {"latency": ms, "jitter": jitter})

    def bandwidth(self, targets: str | list[str], kb_per_s: int) -> None:
        """Cap both directions of each link at ``kb_per_s`` KB/s."""
        if kb_per_s <= 0:
            raise ValueError(f"bandwidth {kb_per_s} KB/s: must be more than 0")
        links = self.links.select(targets)
        fault = self._begin("bandwidth", links, rate_kb_s=kb_per_s)
        for link in links:
            self._toxic(fault, link, "bandwidth", {"rate": kb_per_s})

    def heal(self) -> None:
        """Undo every open fault (newest first) and record the end of each window.

        Every toxic and disabled proxy is tried and every window ends in the history even
        when one removal fails; the first failure is raised afterwards."""
        errors: list[Exception] = []
        while self.open:
            fault = self.open.pop()
            undo = [(self._api.remove_toxic, link, toxic) for link, toxic in fault.toxics]
            undo += [(self._api.enable_proxy, link) for link in fault.disabled]
            for call, *args in undo:
                try:
                    call(*args)
                except Exception as exc:  # noqa: BLE001 - heal the rest, then raise
                    errors.append(exc)
            self.writer.write(
                Kind.FAULT,
                name=fault.name,
                phase="end",
                target=",".join(fault.links),
                detail=fault.detail,
            )
        if errors:
            raise errors[0]

    @contextmanager
    def partitioned(self, targets: str | list[str], mode: Mode = "blackhole") -> Iterator[None]:
        """A partition for the duration of the block, healed afterwards."""
        self.partition(targets, mode)
        try:
            yield
        finally:
            self.heal()
