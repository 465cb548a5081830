"""mxd sendmail: command line, message preparation, config and exit codes (no network;
tests/integration/test_sendmail_twistd.py submits to a running mxd)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd import sendmail
from mxd.sendmail import Exit, Options, SendmailError, parse_args, prepare, split_headers


@pytest.mark.parametrize(("argv", "expected"), [
    # git send-email: sendmail -i RCPTS
    (["-i", "a@x.test", "b@x.test"], Options(("a@x.test", "b@x.test"), ignore_dots=True)),
    # mail / mailx: sendmail -oi -t (or -f)
    (["-oi", "-t"], Options(extract=True, ignore_dots=True)),
    (["-oi", "-f", "me@x.test", "-t"], Options(sender="me@x.test", extract=True,
                                               ignore_dots=True)),
    (["-fme@x.test", "-FMe Myself", "a@x.test"], Options(("a@x.test",), sender="me@x.test",
                                                         full_name="Me Myself")),
    (["-r", "me@x.test", "--", "-odd@x.test"], Options(("-odd@x.test",), sender="me@x.test")),
    (["-bm", "-oem", "-oee", "-odi", "-v", "-Am", "-oQ/var/spool", "-B", "8BITMIME",
      "-O", "DeliveryMode=b", "a@x.test"], Options(("a@x.test",))),
    (["-N", "failure,delay", "-R", "hdrs", "-V", "env1", "a@x.test"],
     Options(("a@x.test",), notify="failure,delay", ret="hdrs", envid="env1")),
    (["--config", "/x.toml", "a@x.test"], Options(("a@x.test",), config=Path("/x.toml"))),
    (["--config=/y.toml", "a@x.test"], Options(("a@x.test",), config=Path("/y.toml"))),
])
def test_parse_args(argv: list[str], expected: Options) -> None:
    """The classic flags of git send-email, mail and cron are understood or ignored."""
    assert parse_args(argv) == expected


@pytest.mark.parametrize(("argv", "text"), [
    (["-bp"], "-bp is not supported"),
    (["-bs"], "-bs is not supported"),
    (["-f"], "-f needs a value"),
    (["-Z"], "unknown option -Z"),
    (["--config"], "--config needs a file name"),
])
def test_parse_args_usage_errors(argv: list[str], text: str) -> None:
    with pytest.raises(SendmailError, match=text) as ei:
        parse_args(argv)
    assert ei.value.code is Exit.USAGE


def test_read_message_dot_rule() -> None:
    """Without -i a lone "." ends the message; with -i it is message text.  CRLF out."""
    raw = b"Subject: x\n\nline\n.\nafter\n"
    assert sendmail.read_message(io.BytesIO(raw), False) == b"Subject: x\r\n\r\nline\r\n"
    assert sendmail.read_message(io.BytesIO(raw), True).endswith(b"\r\n.\r\nafter\r\n")


def test_prepare_adds_date_message_id_and_from() -> None:
    raw = b"To: a@x.test\r\nSubject: hi\r\n\r\nbody\r\n"
    p = prepare(raw, Options(("a@x.test",), full_name='Me "the" User'), "me@x.test",
                "host.test", now=0)
    head = p.data.split(b"\r\n\r\n")[0].decode()
    assert "Date: Thu, 01 Jan 1970" in head
    assert "@host.test>" in head and "Message-ID: <" in head
    assert 'From: "Me \\"the\\" User" <me@x.test>' in head
    assert p.data.endswith(b"\r\n\r\nbody\r\n") and p.recipients == ("a@x.test",)


def test_prepare_keeps_existing_fields() -> None:
    raw = (b"From: Someone <s@x.test>\r\nDate: Mon, 1 Dec 2026 10:00:00 +0000\r\n"
           b"Message-ID: <keep@x.test>\r\n\r\nb\r\n")
    assert prepare(raw, Options(("a@x.test",)), "s@x.test", "h.test").data == raw


def test_prepare_extract_recipients_and_drop_bcc() -> None:
    """-t takes To, Cc and Bcc (folded, with display names) and removes Bcc."""
    raw = (b"To: A <a@x.test>,\r\n  b@x.test\r\nCc: c@x.test\r\nBcc: hidden@x.test\r\n"
           b"Subject: s\r\n\r\nbody\r\n")
    p = prepare(raw, Options(("extra@x.test",), extract=True), "me@x.test", "h.test")
    assert p.recipients == ("extra@x.test", "a@x.test", "b@x.test", "c@x.test",
                            "hidden@x.test")
    assert b"Bcc" not in p.data and b"hidden" not in p.data


def test_prepare_eight_bit_and_utf8() -> None:
    p = prepare("Subject: é\r\n\r\nü\r\n".encode(), Options(("a@x.test",)), "me@x.test", "h")
    assert p.eight_bit and not p.smtputf8
    p = prepare(b"Subject: x\r\n\r\nb\r\n", Options(("jürgen@x.test",)),
                "me@x.test", "h")
    assert p.smtputf8


@pytest.mark.parametrize(("raw", "opts", "code", "text"), [
    (b"Subject: x\r\n\r\nb\r\n", Options(), Exit.USAGE, "no recipients"),
    (b"Subject: x\r\n\r\nb\r\n", Options(extract=True), Exit.USAGE, "no recipients in To"),
    (b"Subject: x\r\n\r\n", Options(("not an address",)), Exit.DATAERR, "bad address"),
    (b"To: x@y.test\r\nbroken line\r\n\r\n", Options(("a@x.test",)), Exit.DATAERR,
     "malformed header line"),
])
def test_prepare_bad_input(raw: bytes, opts: Options, code: Exit, text: str) -> None:
    with pytest.raises(SendmailError, match=text) as ei:
        prepare(raw, opts, "me@x.test", "h.test")
    assert ei.value.code is code


def test_input_without_headers_is_a_body() -> None:
    """Plain text piped in (cron output) becomes the body of a message we complete."""
    p = prepare(b"just some output\r\n", Options(("a@x.test",)), "me@x.test", "h.test")
    assert p.data.endswith(b"\r\n\r\njust some output\r\n") and b"From: me@x.test" in p.data


@given(st.binary(max_size=200))
def test_split_headers_never_crashes(data: bytes) -> None:
    try:
        fields, rest = split_headers(data)
    except SendmailError as e:
        assert e.code is Exit.DATAERR
        return
    assert b"".join(fields) + rest in (data, b"\r\n" + data, data + b"\r\n")


@pytest.mark.parametrize(("code", "enhanced", "stage", "exit_"), [
    (451, "4.3.0", "RCPT", Exit.TEMPFAIL),
    (421, None, "greeting", Exit.TEMPFAIL),
    (550, "5.1.1", "RCPT", Exit.NOUSER),
    (535, "5.7.8", "AUTH", Exit.NOPERM),
    (530, "5.7.0", "AUTH", Exit.UNAVAILABLE),
    (553, "5.7.1", "MAIL FROM", Exit.NOPERM),
    (552, "5.3.4", "DATA", Exit.DATAERR),
    (554, "5.6.0", "DATA", Exit.DATAERR),
    (554, "5.0.0", "DATA", Exit.UNAVAILABLE),
])
def test_exit_for_reply(code: int, enhanced: str | None, stage: str, exit_: Exit) -> None:
    """sysexits.h status per SMTP reply: 4xx EX_TEMPFAIL, unknown user EX_NOUSER, ..."""
    assert sendmail.exit_for_reply(code, enhanced, stage) is exit_


def _config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sendmail.toml"
    p.write_text(text)
    return p


def test_config_password_file_must_be_private(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    os.chmod(pw, 0o644)
    path = _config(tmp_path, f'username = "u@x.test"\npassword_file = "{pw}"\n')
    with pytest.raises(SendmailError, match="readable by others") as ei:
        sendmail.load_config(path)
    assert ei.value.code is Exit.CONFIG
    os.chmod(pw, 0o600)
    cfg, password = sendmail.load_config(path)
    assert password == "secret" and cfg.username == "u@x.test"


@pytest.mark.parametrize(("text", "problem"), [
    ("hots = 'x'", "hots: unknown key"),
    ("port = 0", "port: expected 1 to 65535"),
    ("port = '25'", "port: expected int"),
    ("tls = 'ssl'", "tls: expected starttls, implicit or none"),
    ("tls_verify = 1", "tls_verify: expected bool"),
    ("username = 'u'", "username and password_file go together"),
    ("password_file = '/nonexistent'\nusername = 'u'", "password_file: not found"),
    ("ca_file = '/nonexistent.pem'", "ca_file: not found"),
    ("x = [", "not valid TOML"),
])
def test_config_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(SendmailError, match=problem) as ei:
        sendmail.load_config(path)
    assert ei.value.code is Exit.CONFIG and str(path) in str(ei.value)


def test_missing_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config naming a missing file is EX_CONFIG; a missing default file means defaults."""
    with pytest.raises(SendmailError, match="config file not found"):
        sendmail.load_config(tmp_path / "nope.toml")
    monkeypatch.setattr(sendmail, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    cfg, pw = sendmail.load_config(None)
    assert (cfg.host, cfg.port, cfg.tls, pw) == ("127.0.0.1", 587, "starttls", None)


def test_main_prints_one_line(tmp_path: Path) -> None:
    """Errors are one line on stderr with the sysexits status, never a traceback."""
    err = io.StringIO()
    rc = sendmail.main(["--config", str(tmp_path / "none.toml"), "a@x.test"],
                       stdin=io.BytesIO(b"x\n"), stderr=err)
    assert rc == Exit.CONFIG
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("mxd-sendmail: ")


def test_unknown_host_is_ex_nohost() -> None:
    """A name the system resolver cannot resolve: EX_NOHOST (tested with an endpoint that
    fails as HostnameEndpoint does, so no query leaves the machine)."""
    from twisted.internet import task
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.error import DNSLookupError

    class Unresolvable:
        def connect(self, factory: object) -> Deferred[object]:
            d: Deferred[object] = Deferred()
            d.errback(DNSLookupError("mail.invalid"))
            return d

    cfg = sendmail.SendmailConfig(host="mail.invalid", tls="none")
    msg = prepare(b"Subject: x\r\n\r\nb\r\n", Options(("a@x.test",)), "me@x.test", "h")
    d = ensureDeferred(sendmail.submit(task.Clock(), cfg, None, "me@x.test", msg,
                                       Options(("a@x.test",)), endpoint=Unresolvable()))
    failures: list[object] = []
    d.addErrback(failures.append)
    [f] = failures
    err = f.value  # type: ignore[attr-defined]
    assert isinstance(err, SendmailError) and err.code is Exit.NOHOST
    assert "cannot resolve mail.invalid" in str(err)


def test_internal_error_is_ex_software_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """A bug shows as EX_SOFTWARE with one line, never a traceback."""
    monkeypatch.setattr(sendmail, "DEFAULT_CONFIG", tmp_path / "absent.toml")

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(sendmail, "_run_reactor", broken)
    err = io.StringIO()
    rc = sendmail.main(["a@x.test"], stdin=io.BytesIO(b"Subject: x\n\nb\n"), stderr=err)
    assert rc == Exit.SOFTWARE
    assert err.getvalue() == "mxd-sendmail: internal error: RuntimeError: boom\n"
