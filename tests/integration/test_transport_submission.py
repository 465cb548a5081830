"""The submission/submissions transports against a second `twistd mxd` acting as the
third-party sending service, driven by mxd's real queue runner: SCRAM-SHA-256-PLUS over
TLS 1.3 (tls-exporter) by default, SCRAM-SHA-1-PLUS over the TLS 1.2-capped listener
(tls-unique), every other mechanism when forced, implicit TLS on the submissions port; a
wrong password defers with the service's reply; a server offering only PLAIN without TLS
never gets the password."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from mxd.queue.routes import SmarthostTLS, Transport, TransportKind
from tests.integration.mxdserver import MxdServer
from tests.integration.test_sendmail_twistd import _inbox
from tests.integration.transport_harness import deliver, trust_root

pytestmark = pytest.mark.integration


def _provider(server: MxdServer, port_name: str, mechanisms: tuple[str, ...] = (),
              password: str | None = None) -> Transport:
    kind = TransportKind.SUBMISSIONS if port_name == "submissions" else TransportKind.SUBMISSION
    return Transport("provider", kind, host="127.0.0.1", port=server.ports[port_name],
                     username=server.user, password=password or server.password,
                     mechanisms=mechanisms)


def _arrived(server: MxdServer, marker: bytes) -> bool:
    return any(marker in m for m in _inbox(server, server.user2, server.password2))


CASES = [
    ("submission", (), "SCRAM-SHA-256-PLUS"),  # TLS 1.3: tls-exporter
    ("submission_tls12", ("SCRAM-SHA-1-PLUS",), "SCRAM-SHA-1-PLUS"),  # TLS 1.2: tls-unique
    ("submission_tls12", (), "SCRAM-SHA-256-PLUS"),
    ("submissions", (), "SCRAM-SHA-256-PLUS"),  # implicit TLS (RFC 8314)
    ("submission", ("SCRAM-SHA-256",), "SCRAM-SHA-256"),
    ("submission", ("SCRAM-SHA-1",), "SCRAM-SHA-1"),
    ("submission", ("CRAM-MD5",), "CRAM-MD5"),
    ("submission", ("PLAIN",), "PLAIN"),
    ("submission", ("LOGIN",), "LOGIN"),
]


def test_mechanisms_through_twistd_mxd(mxd_server_module: MxdServer, tls_files: dict[str, Path],
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case relays one message to bob@example.test on the second mxd, which logs the
    mechanism it accepted; bob's INBOX gets the message."""
    s = mxd_server_module

    def accepted(mech: str) -> int:
        # Lines, not occurrences: a worker's logfmt line names the fields in its message
        # and again as fields.
        needle = f"mechanism={mech} account={s.user}"
        return sum(needle in line
                   for line in s.log_path.read_text(errors="replace").splitlines())

    for i, (port_name, mechs, expected) in enumerate(CASES):
        before = accepted(expected)
        marker = f"submission-case-{i}-{expected}"
        out = deliver(monkeypatch, tmp_path / f"d{i}", (_provider(s, port_name, mechs),),
                      [("alice@example.test", [s.user2],
                        {"data": f"From: alice@example.test\r\nTo: {s.user2}\r\n"
                                 f"Subject: {marker}\r\n\r\nhi\r\n".encode()})],
                      lambda m=marker.encode(): _arrived(s, m),  # type: ignore[misc]
                      trust=trust_root(tls_files["ca"]))
        assert out.left == [], (port_name, mechs, out.left)
        [[a]] = out.attempts.values()
        assert (a.transport, a.result, a.tls_verified) == ("provider", "delivered", True)
        assert a.tls_version == ("TLSv1.2" if port_name.endswith("tls12") else "TLSv1.3")
        assert accepted(expected) == before + 1, (port_name, expected)


def test_wrong_password_defers_with_the_reply(mxd_server_module: MxdServer,
                                              tls_files: dict[str, Path], data_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    s = mxd_server_module
    out = deliver(monkeypatch, data_dir, (_provider(s, "submission", password="wrong"),),
                  [("alice@example.test", [s.user2], {})], lambda: False,
                  trust=trust_root(tls_files["ca"]), wait=3.0)
    [m] = out.left
    r = m.recipients[0]
    assert r.last_code == 454 and r.last_enhanced == "4.7.8"
    assert "smarthost 127.0.0.1 refused authentication" in (r.last_text or "")
    assert "535" in (r.last_text or "")


def test_plain_over_plaintext_server_is_refused(tls_files: dict[str, Path], data_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that offers only PLAIN and no STARTTLS (tls = "none"): no AUTH command is
    sent, the message is deferred with the reason."""
    seen: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(10)

    def serve() -> None:
        try:
            c, _ = srv.accept()
        except OSError:
            return
        c.sendall(b"220 plain.test ESMTP\r\n")
        for line in c.makefile("rb"):
            seen.append(line)
            if line.upper().startswith(b"EHLO"):
                c.sendall(b"250-plain.test\r\n250 AUTH PLAIN\r\n")
            elif line.upper().startswith(b"QUIT"):
                c.sendall(b"221 bye\r\n")
                break
            else:
                c.sendall(b"502 5.5.2 no\r\n")
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    plain = Transport("provider", TransportKind.SUBMISSION, host="127.0.0.1",
                      port=srv.getsockname()[1], tls=SmarthostTLS.NONE, username="u",
                      password="p")
    out = deliver(monkeypatch, data_dir, (plain,), [("a@example.org", ["b@remote.test"], {})],
                  lambda: bool(seen) and seen[-1].upper().startswith(b"QUIT"), wait=5.0)
    t.join(5)
    srv.close()
    [m] = out.left
    assert "refusing to authenticate without TLS" in (m.recipients[0].last_text or "")
    assert not any(line.upper().startswith(b"AUTH") for line in seen)
