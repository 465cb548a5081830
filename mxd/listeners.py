"""Listening sockets as services that bind in ``privilegedStartService``.

Binding there lets twistd drop privileges (``--uid/--gid``) after ports below 1024 are
open.  A port that cannot be bound stops start-up with a message naming the listener.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import ILoggingContext, IProtocolFactory
from twisted.logger import Logger
from zope.interface import implementer

from mxd.errors import MxdError


class ListenError(MxdError):
    """A configured port could not be bound."""


class TCPListener(service.Service):
    """Listens on one address and port with one protocol factory."""

    log = Logger()

    def __init__(self, reactor: Any, name: str, address: str, port: int,
                 factory: IProtocolFactory, backlog: int = 128) -> None:
        self._reactor = reactor
        self.setName(name)
        self.address = address
        self.port = port
        self.factory = factory
        self.backlog = backlog
        self.listening: Any = None  # IListeningPort once bound

    def privilegedStartService(self) -> None:
        try:
            self.listening = self._reactor.listenTCP(
                self.port, self.factory, backlog=self.backlog, interface=self.address)
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise ListenError(f"cannot listen for {self.name} on {self.address} port "
                              f"{self.port}: {reason}") from e
        self.port = self.listening.getHost().port
        self.log.info("listening for {listener} on {address} port {port}",
                      listener=self.name, address=self.address, port=self.port)
        super().privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        if self.listening is not None:
            d = self.listening.stopListening()
            self.listening = None
            return d
        return None


class HandedDownSocket(service.Service):
    """The listening sockets of one listener that the main process binds (in
    ``privilegedStartService``, before twistd drops privileges) and never accepts on:
    worker processes inherit them and accept on them (``AdoptedListener``).

    With ``slots`` > 1 there is one socket per worker slot, all bound to the same address
    and port with ``SO_REUSEPORT``; socket(7): "For TCP sockets, this option allows
    accept(2) load distribution in a multi-threaded server to be improved by using a
    distinct listener socket for each thread."  The kernel hashes each new connection
    (by its addresses and ports) to one socket of the group, so only the worker of that
    socket wakes for it and connections spread evenly over the workers, where a single
    shared socket wakes every worker and lets the first awake take a whole burst.

    The main process keeps every slot's socket open for its whole life: a restarted
    worker gets its slot's socket back, and connections hashed to that socket while its
    worker was down stay in its accept queue (none is dropped) until another worker that
    covers the slot (``mxd.supervisor``) or the restarted worker accepts them.  ``close``
    (called when the server stops) closes them at once, so that connections arriving
    during the drain are refused rather than left waiting.
    """

    log = Logger()

    def __init__(self, name: str, address: str, port: int, backlog: int = 128,
                 slots: int = 1) -> None:
        self.setName(name)
        self.address = address
        self.port = port
        self.backlog = backlog
        self.slots = slots
        self.socks: list[socket.socket] = []

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ipaddress.ip_address(self.address).version == 6 else socket.AF_INET

    def _socket(self) -> socket.socket:
        s = socket.socket(self.family, socket.SOCK_STREAM)
        # As listenTCP does: SO_REUSEADDR, and IPV6_V6ONLY left to the system's default
        # (so "::" takes IPv4 too where the system is dual-stack).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s

    def _listen(self, s: socket.socket) -> None:
        s.listen(self.backlog)
        s.setblocking(False)
        self.socks.append(s)

    def privilegedStartService(self) -> None:
        s: socket.socket | None = None
        try:
            # The first socket binds without SO_REUSEPORT, so the bind fails if anything
            # listens on the port already: another server (or a second mxd) of the same
            # user with SO_REUSEPORT set would otherwise be joined silently and take a
            # share of the connections.  Set after the bind, the option still counts for
            # the next binds and for listen(), where Linux forms the group with this
            # socket as its first member.  A port of 0 (tests) is chosen by this bind and
            # the other sockets bind to the same one.
            s = self._socket()
            s.bind((self.address, self.port))
            if self.slots > 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._listen(s)
            port = s.getsockname()[1]
            for _ in range(self.slots - 1):
                s = self._socket()
                # socket(7): every socket of the group has the same effective user ID as
                # the first one's bind (this one binds before twistd drops privileges).
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((self.address, port))
                self._listen(s)
        except OSError as e:
            if s is not None and s not in self.socks:
                s.close()
            self.close()
            raise ListenError(f"cannot listen for {self.name} on {self.address} port "
                              f"{self.port}: {e.strerror or e}") from e
        self.port = port
        self.log.info("listening for {listener} on {address} port {port} (served by the "
                      "workers, {n} socket(s))", listener=self.name, address=self.address,
                      port=self.port, n=len(self.socks))
        super().privilegedStartService()

    def fileno(self, slot: int = 0) -> int:
        """The descriptor of the socket of worker slot ``slot`` (0-based)."""
        if not self.socks:
            raise ListenError(f"{self.name} is not bound")
        return self.socks[slot % len(self.socks)].fileno()

    def close(self) -> None:
        """Close every socket (idempotent): new connections are refused from now on."""
        for s in self.socks:
            s.close()
        self.socks = []

    def stopService(self) -> Any:
        super().stopService()
        self.close()
        return None


@implementer(ILoggingContext)
class _CountingFactory:
    """A listener's factory as the listening port sees it: counts what it accepted
    (``buildProtocol`` is called once per accepted connection), delegates the rest."""

    def __init__(self, factory: IProtocolFactory, accepted: Callable[[], None]) -> None:
        self._factory = factory
        self._accepted = accepted

    def buildProtocol(self, addr: Any) -> Any:
        self._accepted()
        return self._factory.buildProtocol(addr)

    def doStart(self) -> None:
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self._factory, "logPrefix", None)
        return str(prefix()) if callable(prefix) else self._factory.__class__.__name__

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)


class AdoptedListener(service.Service):
    """A worker's side of a ``HandedDownSocket``: accept on the inherited descriptor.
    ``accepted`` counts the connections this process accepted on it (also as the
    ``worker_connections_accepted`` metric, labelled with the listener and ``worker``)."""

    log = Logger()

    def __init__(self, reactor: Any, name: str, fd: int, family: int,
                 factory: IProtocolFactory, metrics: Any = None, worker: int = 0) -> None:
        self._reactor = reactor
        self.setName(name)
        self.fd = fd
        self.family = family
        self.factory = factory
        self.listening: Any = None
        self.address = ""
        self.port = 0
        self.accepted = 0
        self._metrics = metrics
        self._worker = str(worker)

    def _count(self) -> None:
        self.accepted += 1
        if self._metrics is not None:
            self._metrics.inc("worker_connections_accepted", listener=self.name,
                              worker=self._worker)

    def privilegedStartService(self) -> None:
        # adoptStreamPort duplicates the descriptor; the inherited one is closed so that
        # stopListening really closes this worker's last reference to the socket.
        self.listening = self._reactor.adoptStreamPort(
            self.fd, self.family, _CountingFactory(self.factory, self._count))
        os.close(self.fd)
        host = self.listening.getHost()
        self.address, self.port = host.host, host.port
        super().privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        if self.listening is not None:
            d = self.listening.stopListening()
            self.listening = None
            return d
        return None
