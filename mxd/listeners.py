"""Listening sockets as services that bind in ``privilegedStartService``.

Binding there lets twistd drop privileges (``--uid/--gid``) after ports below 1024 are
open.  A port that cannot be bound stops start-up with a message naming the listener.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

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
    """A listening socket the main process binds (in ``privilegedStartService``, before
    twistd drops privileges) and never accepts on: worker processes inherit it and
    accept on it (``AdoptedListener``); the kernel hands each connection to one of them."""

    log = Logger()

    def __init__(self, name: str, address: str, port: int, backlog: int = 128) -> None:
        self.setName(name)
        self.address = address
        self.port = port
        self.backlog = backlog
        self.sock: socket.socket | None = None

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ipaddress.ip_address(self.address).version == 6 else socket.AF_INET

    def privilegedStartService(self) -> None:
        s = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            # As listenTCP does: SO_REUSEADDR, and IPV6_V6ONLY left to the system's
            # default (so "::" takes IPv4 too where the system is dual-stack).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.address, self.port))
            s.listen(self.backlog)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise ListenError(f"cannot listen for {self.name} on {self.address} port "
                              f"{self.port}: {e.strerror or e}") from e
        self.sock = s
        self.port = s.getsockname()[1]
        self.log.info("listening for {listener} on {address} port {port} (served by the "
                      "workers)", listener=self.name, address=self.address, port=self.port)
        super().privilegedStartService()

    def fileno(self) -> int:
        if self.sock is None:
            raise ListenError(f"{self.name} is not bound")
        return self.sock.fileno()

    def stopService(self) -> Any:
        super().stopService()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return None


class AdoptedListener(service.Service):
    """A worker's side of a ``HandedDownSocket``: accept on the inherited descriptor."""

    log = Logger()

    def __init__(self, reactor: Any, name: str, fd: int, family: int,
                 factory: IProtocolFactory) -> None:
        self._reactor = reactor
        self.setName(name)
        self.fd = fd
        self.family = family
        self.factory = factory
        self.listening: Any = None
        self.address = ""
        self.port = 0

    def privilegedStartService(self) -> None:
        # adoptStreamPort duplicates the descriptor; the inherited one is closed so that
        # stopListening really closes this worker's last reference to the socket.
        self.listening = self._reactor.adoptStreamPort(self.fd, self.family, self.factory)
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
