"""Two `twistd mxd` processes: the first relays through the second (its submission
transport, from the config file: [transports.provider] with a password file and the test
CA as [outbound].ca_file, chosen by the submitting account's route) with
SCRAM-SHA-256-PLUS; `mxd queue show` names each attempt's
transport and route; `mxd queue transport ID NAME` and POST /api/queue/ID/transport set
the per-message override, which moves a deferred message onto the transport."""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mxdserver import MxdServer

pytestmark = pytest.mark.integration


def _submit(server: MxdServer, rcpt: str, subject: str) -> None:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(server.user, server.password)
        s.sendmail(server.user, [rcpt], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def _post(server: MxdServer, path: str, headers: dict[str, str] | None = None,
          ) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{server.ports['admin']}{path}", data=b"",
                                 headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _queue(server: MxdServer) -> list[dict[str, Any]]:
    r = server.mxd("queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_first_mxd_relays_through_second(mxd_server_factory: Any, tmp_path: Path) -> None:
    provider: MxdServer = mxd_server_factory()
    pw = tmp_path / "provider.password"
    pw.write_text(MxdServer.password + "\n")
    os.chmod(pw, 0o600)
    first: MxdServer = mxd_server_factory(extra_config=f'''
[outbound]
ca_file = "{provider.ca_file}"

[transports.provider]
kind = "submission"
host = "127.0.0.1"
port = {provider.ports["submission"]}
username = "{MxdServer.user}"
password_file = "{pw}"

[[accounts]]
name = "{MxdServer.user}"
addresses = ["{MxdServer.user}"]
[[accounts.routes]]
to_domains = ["remote.test"]
transport = "provider"
''')
    _submit(first, "someone@remote.test", "via-provider-1")

    def at_provider(subject_rcpt: str) -> Any:
        return [m for m in _queue(provider)
                if [r["address"] for r in m["recipients"]] == [subject_rcpt]]

    [relayed] = _until(lambda: at_provider("someone@remote.test"), "not relayed")
    assert relayed["from"] == MxdServer.user
    log = provider.log_path.read_text(errors="replace")
    assert f"mechanism=SCRAM-SHA-256-PLUS account={MxdServer.user}" in log
    # the account's route chose the transport (the submitter is kept with the message)
    assert (f"via transport provider (account {MxdServer.user} route 1)"
            in first.log_path.read_text(errors="replace"))

    # No route for nowhere.test: direct, which cannot resolve (deferred, transport direct).
    _submit(first, "x@nowhere.test", "direct-then-override")
    msg = _until(lambda: [m for m in _queue(first)
                          if m["recipients"][0]["attempts"] >= 1], "no attempt")[0]
    qid = msg["queue_id"]
    shown = json.loads(first.mxd("queue", "show", qid, "--json").stdout)
    assert [a["transport"] for a in shown["attempts"]] == ["direct"]
    assert shown["attempts"][0]["route"] == "default"
    bad = first.mxd("queue", "transport", qid, "nosuch")
    assert bad.returncode != 0 and "unknown transport 'nosuch'" in bad.stderr
    r = first.mxd("queue", "transport", qid, "default")
    assert r.returncode == 0 and "set to default" in r.stdout, r.stderr
    # The admin API sets the override on the running server.
    hdr = first.admin_headers()
    assert _post(first, f"/api/queue/{qid}/transport?name=provider")[0] == 401
    code, body = _post(first, f"/api/queue/{qid}/transport?name=nosuch", hdr)
    assert code == 400 and "unknown transport" in body
    assert _post(first, "/api/queue/nope/transport?name=provider", hdr)[0] == 404
    code, body = _post(first, f"/api/queue/{qid}/transport?name=provider", hdr)
    assert code == 200 and json.loads(body)["recipients"] == 1
    shown = json.loads(first.mxd("queue", "show", qid, "--json").stdout)
    assert shown["recipients"][0]["transport"] == "provider"
    assert _until(lambda: first.mxd("queue", "kick", qid).returncode in (0, 1), "kick")
    _until(lambda: at_provider("x@nowhere.test"), "override did not relay the message")
    assert not [m for m in _queue(first) if m["queue_id"] == qid]
