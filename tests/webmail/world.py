"""A webmail over a MemoryStore and a real SASL server (cheap hashes, the real login
limiter), driven through its twisted.web Site in memory."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from mxd.directory.local import DirectorySettings, LocalDirectory
from mxd.sasl.ratelimit import AuthLimiter
from mxd.sasl.server import SASLServer, SASLSettings
from mxd.sasl.testing import CHEAP_ITERATIONS, CHEAP_SCRYPT_N
from mxd.store.interfaces import Delivery, MessageProps
from mxd.store.testing import MemoryStore
from mxd.webmail.context import WebmailContext
from mxd.webmail.site import webmail_site
from tests.webtesting import http_request

ALICE = "alice@example.test"
PASSWORD = "alice pass"


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore()
        self.directory = LocalDirectory(self.store, DirectorySettings(
            domains=("example.test",), scram_iterations=CHEAP_ITERATIONS,
            scrypt_n=CHEAP_SCRYPT_N))
        self.account = self.directory.add_account(ALICE, PASSWORD, [ALICE]).result
        self.lookups: list[str] = []

        def lookup(name: str) -> Any:
            self.lookups.append(name)
            return self.directory.lookup_secrets(name)

        self.sasl = SASLServer(lookup, SASLSettings(
            fake_salt_key=b"mxd-test-fake-salt-key-000000000",
            fake_scram_iterations=CHEAP_ITERATIONS, fake_scrypt_n=CHEAP_SCRYPT_N),
            AuthLimiter(self.clock), self.clock, "mail.example.test")
        self.ctx = WebmailContext(clock=self.clock, store=self.store, directory=self.directory,
                                  sasl=self.sasl, hosts=frozenset(["mail.example.test"]),
                                  session_lifetime=3600, session_idle=600, page_size=3,
                                  run_blocking=lambda f: maybeDeferred(f))
        self.site = webmail_site(self.ctx)

    def request(self, method: str, path: str, *, cookie: str | None = None,
                body: bytes = b"", peer: str = "127.0.0.1", host: str | None = "127.0.0.1:8081",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        hdrs = dict(headers or {})
        if cookie:
            hdrs["Cookie"] = cookie
        return http_request(self.site, method, path, host=host, headers=hdrs, body=body,
                            peer=peer)

    def login(self, address: str = ALICE, password: str = PASSWORD,
              peer: str = "127.0.0.1") -> tuple[int, str]:
        from urllib.parse import urlencode

        code, hdrs, _ = self.request("POST", "/login", body=urlencode(
            {"address": address, "password": password}).encode(), peer=peer)
        return code, hdrs.get("set-cookie", "").split(";", 1)[0]

    def csrf(self, cookie: str, path: str = "/") -> str:
        _, _, page = self.request("GET", path, cookie=cookie)
        m = re.search(rb'name=csrf value="([^"]+)"', page)
        assert m is not None, page
        return m.group(1).decode()

    def deliver(self, raw: bytes, mailbox: str = "INBOX",
                flags: frozenset[str] = frozenset()) -> int:
        w = self.store.new_blob()
        w.write(raw)
        uids = self.store.deliver(w, [Delivery(self.account.id, mailbox, flags)],
                                  MessageProps()).result
        return int(uids[0])
