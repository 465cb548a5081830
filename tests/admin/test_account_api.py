"""GET /api/account/tls/domains: an account's own TLS support records, authenticated by
the account's credentials (HTTP Basic through the SASL password check), never the
admin's session or token, only over TLS or from loopback."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from mxd.admin.account_api import basic_credentials
from mxd.admin.web import admin_site
from mxd.sasl.api import Failure, Success
from mxd.store.queuedb import DomainTLS
from tests.admin.test_auth import Admin


class _SASL:
    """The password check: alice/alice-pw and bob/bob-pw; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.limited = False

    def check_password(self, user: str, password: str, conn: Any) -> Any:
        self.calls.append((user, conn))
        if self.limited:
            return succeed(Failure("rate limited", rate_limited=True))
        if {"alice": "alice-pw", "bob": "bob-pw"}.get(user) == password:
            return succeed(Success(authcid=user))
        return succeed(Failure("authentication failed"))


class _Queue:
    def __init__(self) -> None:
        self.rows = {"alice": [DomainTLS("remote.test", 1_000_000.0, "mx.remote.test",
                                         "192.0.2.1", True, True, True, True, "sts", None)],
                     "bob": []}

    def tls_domains(self, domain: str | None = None, account: str | None = None) -> Any:
        assert account is not None  # never the global table
        return succeed([r for r in self.rows.get(account, [])
                        if domain is None or r.domain == domain])


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _get(a: Admin, path: str, headers: dict[str, str], peer: str = "127.0.0.1"
         ) -> tuple[int, dict[str, str], bytes]:
    proto: Any = a.site.buildProtocol(None)
    tr = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    proto.makeConnection(tr)
    lines = [f"GET {path} HTTP/1.0", "Host: 127.0.0.1:8080", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
    head, _, content = tr.value().partition(b"\r\n\r\n")
    status, *hdr_lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in hdr_lines)}
    proto.connectionLost(None)
    return int(status.split()[1]), hdrs, content


@pytest.fixture
def world(tmp_path: Path, hashed: str) -> tuple[Admin, _SASL]:
    a = Admin(tmp_path, hashed)
    sasl = _SASL()
    a.ctx.sasl, a.ctx.queue = sasl, _Queue()
    a.site = admin_site(a.ctx)
    return a, sasl


def test_account_sees_only_its_own_records(world: tuple[Admin, _SASL]) -> None:
    import json

    a, sasl = world
    code, hdrs, body = _get(a, "/api/account/tls/domains", {"Authorization": _basic("alice", "alice-pw")})
    assert code == 200, body
    assert hdrs["cache-control"] == "no-store"
    [row] = json.loads(body)
    assert (row["domain"], row["policy"], row["verified"]) == ("remote.test", "sts", True)
    code, _, body = _get(a, "/api/account/tls/domains", {"Authorization": _basic("bob", "bob-pw")})
    assert code == 200 and json.loads(body) == []
    code, _, body = _get(a, "/api/account/tls/domains?domain=other.test",
                         {"Authorization": _basic("alice", "alice-pw")})
    assert code == 200 and json.loads(body) == []
    assert sasl.calls[0][1].service == "admin" and sasl.calls[0][1].remote_ip == "127.0.0.1"


def test_wrong_or_missing_credentials_get_a_challenge(world: tuple[Admin, _SASL]) -> None:
    a, sasl = world
    for headers in ({}, {"Authorization": _basic("alice", "bob-pw")},
                    {"Authorization": "Basic !!!"}, {"Authorization": f"Bearer {a.token}"}):
        code, hdrs, body = _get(a, "/api/account/tls/domains", headers)
        assert code == 401, (headers, body)
        assert hdrs["www-authenticate"].startswith('Basic realm="mxd account"')
        assert b"remote.test" not in body
    assert [u for u, _ in sasl.calls] == ["alice"]  # malformed/absent: no check at all


def test_rate_limited_login_gets_429(world: tuple[Admin, _SASL]) -> None:
    a, sasl = world
    sasl.limited = True
    code, _, body = _get(a, "/api/account/tls/domains", {"Authorization": _basic("alice", "alice-pw")})
    assert code == 429 and b"remote.test" not in body


def test_plain_http_from_a_remote_peer_is_refused_unchecked(world: tuple[Admin, _SASL]) -> None:
    a, sasl = world
    code, _, _ = _get(a, "/api/account/tls/domains", {"Authorization": _basic("alice", "alice-pw")},
                      peer="192.0.2.7")
    assert code == 403 and sasl.calls == []


def test_admin_session_does_not_open_the_account_api(world: tuple[Admin, _SASL]) -> None:
    a, _ = world
    _, cookie = a.login()
    code, _, _ = _get(a, "/api/account/tls/domains", {"Cookie": cookie})
    assert code == 401


@pytest.mark.parametrize("header,expected", [
    (b"Basic " + base64.b64encode(b"alice:pw:with:colons"), ("alice", "pw:with:colons")),
    (b"basic " + base64.b64encode("j\u00f6rg:p\u00e4ss".encode()), ("j\u00f6rg", "p\u00e4ss")),
    (b"Basic " + base64.b64encode(b"nocolon"), None),
    (b"Basic " + base64.b64encode(b":pw"), None),
    (b"Basic " + base64.b64encode(b"\xff:pw"), None),
    (b"Basic not base64!", None),
    (b"Digest abc", None),
    (None, None),
])
def test_basic_credentials(header: bytes | None, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(header) == expected
