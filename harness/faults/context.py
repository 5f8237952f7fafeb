"""What faults and triggers need from a running deployment, and one fault window.

:class:`Deployment` is the interface the fault vocabulary acts on. The imperative
:class:`~harness.runner.scenario.Scenario` implements it over a backend (local processes
today); faults never import a backend, so a second backend plugs in without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.history.schema import Record
from harness.history.store import HistoryWriter


@dataclass
class Window:
    """One step's run: its fault window (for faults) and what it produced.

    ``detail`` goes into the ``fault`` records (keys starting with ``_`` stay private to
    the op); ``task_ids`` and ``output_target`` are the step's outputs, which later
    triggers and checker parameters reference as ``${step_id}``.
    """

    step: str
    seq: int
    name: str = ""
    target: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    #: The task a ``running`` trigger picked (a kill aims at its child).
    picked_task: str | None = None
    picked: list[str] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    output_target: str = ""
    start_ns: int | None = None
    applied_ns: int | None = None
    end_ns: int | None = None

    def public_detail(self) -> dict[str, Any]:
        """``detail`` without the op's private keys."""
        return {k: v for k, v in self.detail.items() if not k.startswith("_")}


class LinkApi(Protocol):
    """The part of the Toxiproxy API that link faults use."""

    def add_toxic(
        self, proxy: str, type_: str, attributes: dict[str, int], *, name: str, stream: str
    ) -> Any: ...
    def remove_toxic(self, proxy: str, toxic: str) -> None: ...
    def disable_proxy(self, proxy: str) -> Any: ...
    def enable_proxy(self, proxy: str) -> Any: ...


class LoadHandle(Protocol):
    """A started load."""

    def wait(self, timeout: float | None = None) -> int: ...


class Deployment(Protocol):
    """A running deployment as faults, actions and triggers see it."""

    writer: HistoryWriter
    broker_kind: str | None

    # workers
    def worker_names(self) -> list[str]: ...
    def worker_pid(self, name: str) -> int: ...
    def child_pids(self, name: str) -> list[int]: ...
    def signal_worker(self, name: str, sig: int, *, wait_exit: float | None = None) -> None: ...
    def signal_pid(
        self, pid: int, sig: int, *, wait_exit: float | None = None, missing_ok: bool = False
    ) -> None: ...
    def start_worker(self, name: str) -> None: ...
    def cancel_consumers(self, names: list[str] | None) -> None: ...
    def running_on(self, name: str, until_ns: int | None = None) -> dict[str, Record]: ...
    def worker_log(self, name: str) -> str: ...

    # broker
    def crash_broker(self) -> None: ...
    def stop_broker(self) -> None: ...
    def start_broker(self) -> None: ...
    def queue_depths(self) -> dict[str, tuple[int, int]]: ...

    # links
    def select_links(self, targets: str | list[str]) -> list[str]: ...
    def link_api(self) -> LinkApi: ...

    # packets (a packet-level network of namespaces)
    def packet_nodes(self, patterns: str | list[str]) -> list[str]: ...
    def cut_packets(self, nodes: list[str], peers: list[str], *, outbound: bool, inbound: bool,
                    loss: float | None = None) -> Any: ...
    def heal_packets(self, cut: Any) -> None: ...

    # beat
    def beat_names(self) -> list[str]: ...
    def beat_pid(self, name: str) -> int: ...
    def beat_leader(self) -> str: ...
    def signal_beat(self, name: str, sig: int, *, wait_exit: float | None = None) -> None: ...
    def start_beats(self, names: list[str]) -> None: ...

    # services, load and history
    def set_http_failures(self, key: str, failures: int) -> None: ...
    def publish_now(
        self, task: str, args: list[Any], count: int, options: dict[str, Any] | None = None
    ) -> list[str]: ...
    def publish_encoded_now(
        self, task: str, args: list[Any], count: int, serializer: str
    ) -> list[str]: ...
    def start_load(self, spec: Any) -> LoadHandle: ...
    def loads_done(self) -> bool: ...
    def history(self) -> list[Record]: ...
