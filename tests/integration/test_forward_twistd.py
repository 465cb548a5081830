"""Forwarding end to end: ``twistd mxd`` with a ``[[forward]]`` rule, the DNSSEC lab and an
aiosmtpd sink as the destination's MX.

A DKIM-signed message from sender.test to alias@example.test leaves for remote.test with
an SRS envelope sender of example.test and an ARC set sealed with example.test's RSA key;
at the sink dkimpy verifies both the sender's DKIM signature and our ARC chain.  A bounce
sent back to the SRS address reaches the original sender; a forged SRS address is refused;
a forwarded copy refused by the destination makes a DSN that goes to the original sender,
not to the SRS address.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mxd.msgauth.dkimkeys import DKIMKey, generate_key
from mxd.msgauth.dkimsign import sign_message
from mxd.srs import SRS
from tests.integration.dnslab import DNSLab, ZoneSpec
from tests.integration.mxdserver import make_server
from tests.queue.sinks import AiosmtpdSink

pytestmark = pytest.mark.integration


def _rr(key: DKIMKey) -> str:
    owner, rdata = key.zone_line().split(". IN ", 1)
    return owner.removesuffix("." + key.domain) + " IN " + rdata


def _until(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_forward_srs_arc_and_the_way_back(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    import dkim as dkimpy

    keys = tmp_path / "keys"
    sender_key = generate_key(keys, "sender.test", "s1", "ed25519")
    our_key = generate_key(keys, "example.test", "arc1", "rsa")
    lab = DNSLab(tmp_path / "lab").start({
        "sender.test": ZoneSpec(records=['@ TXT "v=spf1 ip4:127.0.0.1 -all"',
                                         '_dmarc TXT "v=DMARC1; p=reject"', _rr(sender_key),
                                         "@ MX 10 mx.remote.test."]),
        "remote.test": ZoneSpec(records=["@ MX 10 mx", "mx A 127.0.0.1"]),
    })
    sink = AiosmtpdSink(tls_files["cert"], tls_files["key"])
    server = None
    try:
        with sink:
            (tmp_path / "mxd").mkdir()
            server = make_server(tmp_path / "mxd", tls_files, resolver=lab.resolver_address,
                                 extra_config=f'''
[queue]
smtp_port = {sink.port}
[dkim]
key_dir = "{keys}"
selectors = {{ "example.test" = ["arc1"] }}
[[forward]]
address = "alias@example.test"
to = ["someone@remote.test"]
[[forward]]
address = "broken@example.test"
to = ["bounce@remote.test"]
''')
            server.start()
            message = sign_message([sender_key], (
                b"From: A <a@sender.test>\r\nTo: alias@example.test\r\n"
                b"Subject: forwarded\r\nDate: Sat, 05 Dec 2026 07:00:00 +0000\r\n"
                b"Message-ID: <fw1@sender.test>\r\n\r\nhello through a forwarder\r\n"),
                int(time.time()))
            port = server.ports["smtp"]
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.ehlo("client.sender.test")
                c.sendmail("a@sender.test", ["alias@example.test"], message)

            got = _until(lambda: [m for m in sink.messages
                                  if m["rcpts"] == ["someone@remote.test"]], "forwarded copy")[0]
            srs_sender = got["mail_from"]
            assert srs_sender.startswith("SRS0=") and srs_sender.endswith("@example.test")
            data = got["data"]
            table = {k.dns_name.encode() + b".": k.txt.encode() for k in (sender_key, our_key)}

            def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
                return table.get(name if name.endswith(b".") else name + b".", b"")

            # The sender's own signature survives forwarding (body and fields untouched) ...
            assert dkimpy.verify(data, dnsfunc=dnsfunc)
            # ... and our ARC set verifies with an independent implementation.
            cv, _results, reason = dkimpy.arc_verify(data, dnsfunc=dnsfunc)
            assert cv == dkimpy.CV_Pass, reason
            assert b"ARC-Authentication-Results: i=1; mx.example.test;" in data
            assert b"dkim=pass header.d=sender.test" in data

            # A bounce to the SRS address goes back to the original sender.
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.ehlo("mx.remote.test")
                c.sendmail("", [srs_sender], b"Subject: bounce\r\nFrom: MAILER-DAEMON@"
                           b"remote.test\r\nTo: <" + srs_sender.encode() + b">\r\n\r\n"
                           b"your message could not be delivered\r\n")
                # One made with another secret is refused: no relay through SRS.
                forged = SRS(b"not-ours").forward("victim@remote.test", "example.test",
                                                  time.time())
                code, _ = c.docmd("MAIL FROM:<>")
                assert code == 250
                code, text = c.docmd(f"RCPT TO:<{forged}>")
                assert code == 550, text
                c.rset()
            back = _until(lambda: [m for m in sink.messages if m["rcpts"] == ["a@sender.test"]
                                   and b"Subject: bounce" in m["data"]], "bounce")[0]
            assert back["mail_from"] in ("", "<>")  # the null sender (aiosmtpd shows <>)

            # The destination refuses a forwarded copy: the DSN goes to the original
            # sender (the SRS address unwrapped), not to the SRS address.
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.ehlo("client.sender.test")
                c.sendmail("a@sender.test", ["broken@example.test"], sign_message(
                    [sender_key], b"From: a@sender.test\r\nTo: broken@example.test\r\n"
                    b"Subject: will bounce\r\nMessage-ID: <fw2@sender.test>\r\n\r\nx\r\n",
                    int(time.time())))
            dsn = _until(lambda: [m for m in sink.messages if m["rcpts"] == ["a@sender.test"]
                                  and b"multipart/report" in m["data"]], "DSN")[0]
            assert dsn["mail_from"] in ("", "<>")
            assert b"bounce@remote.test" in dsn["data"]
    finally:
        if server is not None:
            server.stop()
        lab.stop()
