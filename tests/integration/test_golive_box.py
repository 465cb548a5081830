"""A domain in a box: `mxd quickstart` for example.test, its records in a signed lab zone,
`twistd mxd` running, then `mxd dns check` reports all OK; breaking one record at a time
(TLSA, SPF, MTA-STS id, DMARC) fails exactly that check; posttls-finger verifies mxd's
inbound TLS with DANE; Postfix with smtp_tls_security_level = dane delivers to mxd and logs
"Verified TLS connection"; the autoconfig XML fetched over HTTPS has the documented shape.

mxd's SMTP listener is on port 25 of a random 127.x.y.z address (the A record of
mx.example.test), so DANE clients look up _25._tcp.mx.example.test exactly as on the
internet.  Needs root (port 25, port 53 for the C library resolver, Postfix's master).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dnslab import DNSLab, ZoneSpec
from tests.integration.tools import (
    free_port,
    in_ci,
    postfix_main_cf,
    postfix_master_cf,
    require_module,
    require_tool,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
DOMAIN = "example.test"
HOST = "mx.example.test"


def _need_root() -> None:
    if os.geteuid() != 0:
        msg = "the domain-in-a-box test needs root (port 25 and 53, Postfix)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


def _free_port25_address() -> str:
    for _ in range(50):
        addr = f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}." \
               f"{secrets.randbelow(250) + 2}"
        with socket.socket() as s:
            try:
                s.bind((addr, 25))
            except OSError:
                continue
        return addr
    raise RuntimeError("no 127.x.y.z address with a free port 25")


def _mxd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "mxd"), *args], capture_output=True, text=True,
                          timeout=timeout)


def _zone_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if " IN " in ln and not ln.startswith(";")]


def _zones(lines: list[str]) -> dict[str, ZoneSpec]:
    fwd = [ln for ln in lines if ln.split()[0].rstrip(".").endswith(DOMAIN)]
    rev = [ln for ln in lines if ln.split()[0].rstrip(".").endswith("127.in-addr.arpa")]
    assert len(fwd) + len(rev) == len(lines), lines
    return {DOMAIN: ZoneSpec(records=fwd), "127.in-addr.arpa": ZoneSpec(records=rev)}


class Box:
    """The quickstart output, the config, the lab and the running server."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.etc = tmp / "etc"
        self.config = self.etc / "mxd.toml"
        self.addr = _free_port25_address()
        self.ports: dict[str, int] = {}
        self.records: list[str] = []
        self.lab: DNSLab | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.quickstart_output = ""

    def quickstart(self) -> None:
        r = _mxd("quickstart", f"you@{DOMAIN}", "--hostname", HOST, "--dir", str(self.etc),
                 "--data-dir", str(self.tmp / "data"), "--ip", self.addr, "--no-acme",
                 "--resolver", "127.0.0.1:1")
        assert r.returncode == 0, r.stderr
        self.quickstart_output = r.stdout
        self.records = _zone_lines(r.stdout)
        # Listeners on this test's addresses and free ports (quickstart writes 25, 587, ...).
        text = self.config.read_text()

        def port_for(m: re.Match[str]) -> str:
            proto = m.group(1)
            if proto == "admin":
                port, addr = free_port(), "127.0.0.1"
            else:
                port, addr = (25 if proto == "smtp" else free_port(self.addr)), self.addr
            self.ports[proto] = port
            return f'protocol = "{proto}"\naddress = "{addr}"\nport = {port}'

        text = re.sub(r'protocol = "(\w+)"\naddress = "[^"]*"\nport = \d+', port_for, text)
        self.config.write_text(text + f"\n[outbound]\nmta_sts_port = {self.ports['https']}\n")

    def start_lab(self, records: list[str], port53: bool = False) -> DNSLab:
        lab = DNSLab(self.tmp / f"lab{secrets.token_hex(3)}")
        lab.start(_zones(records), port53=port53)
        host, port = lab.resolver_address
        text = re.sub(r'nameservers = \["[^"]*"\]', f'nameservers = ["{host}:{port}"]',
                      self.config.read_text())
        self.config.write_text(text)
        return lab

    def start_server(self, timeout: float = 30) -> None:
        log = open(self.tmp / "mxd.log", "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "mxd", "--config",
             str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)
        deadline = time.monotonic() + timeout
        for proto, port in self.ports.items():
            addr = "127.0.0.1" if proto == "admin" else self.addr
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mxd exited: {self.log()}")
                try:
                    socket.create_connection((addr, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"mxd not listening on {proto}: {self.log()}") \
                            from None
                    time.sleep(0.05)

    def log(self) -> str:
        return (self.tmp / "mxd.log").read_text(errors="replace")[-4000:]

    def full_log(self) -> str:
        return (self.tmp / "mxd.log").read_text(errors="replace")

    def ca_file(self) -> Path:
        """The self-signed certificates mxd serves (kept in its data dir), as trust roots
        for the MTA-STS policy fetch (a WebPKI certificate needs a CA: the ACME test)."""
        path = self.tmp / "served.pem"
        certs = sorted((self.tmp / "data" / "acme" / "certs").glob("selfsigned.*.pem"))
        assert len(certs) == 2
        path.write_bytes(b"".join(p.read_bytes() for p in certs))
        return path

    def check(self) -> tuple[int, dict[str, Any]]:
        r = _mxd("dns", "check", DOMAIN, "--json", "--config", str(self.config),
                 "--ca-file", str(self.ca_file()))
        assert r.returncode in (0, 1), r.stderr
        return r.returncode, json.loads(r.stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    _need_root()
    for tool in ("nsd", "unbound", "ldns-signzone"):
        require_tool(tool)
    tmp = tmp_path_factory.mktemp("box")
    os.chmod(tmp, 0o755)
    b = Box(tmp)
    b.quickstart()
    b.lab = b.start_lab(b.records, port53=True)
    b.start_server()
    try:
        yield b
    finally:
        b.stop()
        b.lab.stop()


def _statuses(report: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in report["results"]:
        # a check name may repeat (one dkim result per selector): keep the worst
        prev = out.get(r["check"], "OK")
        out[r["check"]] = r["status"] if r["status"] != "OK" else prev
    return out


def test_quickstart_records_load_and_dns_check_is_all_ok(box: Box) -> None:
    """Every check passes against the signed zone made from quickstart's records, each on
    DNSSEC-authenticated answers; --json output parses."""
    status, report = box.check()
    bad = [r for r in report["results"] if r["status"] != "OK"]
    assert status == 0 and not bad, json.dumps(bad, indent=1) + box.log()
    assert report["domain"] == DOMAIN and report["errors"] == 0
    checks = {r["check"] for r in report["results"]}
    assert checks >= {"dnssec", "mx", "address", "iprev", "spf", "dkim", "dmarc", "mta-sts",
                      "mta-sts-policy", "tlsrpt", "tlsrpt-host", "tlsa", "srv", "autoconfig"}
    assert {r["dnssec"] for r in report["results"]} == {"secure"}
    text = _mxd("dns", "check", DOMAIN, "--config", str(box.config), "--ca-file",
                str(box.ca_file()))
    assert text.returncode == 0 and text.stdout.count("\nOK ") + 1 == len(report["results"])


def test_server_checked_its_tlsa_records_at_start(box: Box) -> None:
    deadline = time.monotonic() + 20
    while "inbound DANE" not in box.full_log() and time.monotonic() < deadline:
        time.sleep(0.1)
    # The whole log: worker processes add lines after the main process's check.
    assert ("TLSA records at _25._tcp.mx.example.test match the host keys in use"
            in box.full_log()), box.log()


def _break_tlsa(lines: list[str]) -> list[str]:
    return [re.sub(r"TLSA 3 1 1 \w+", "TLSA 3 1 1 " + "ab" * 32, ln) for ln in lines]


def _break_spf(lines: list[str]) -> list[str]:
    return [ln.replace("v=spf1 ip4:", "v=spf1 ip4:192.0.2.99 ip4:192.0.2.")
            if ln.startswith(f"{DOMAIN}. ") else ln for ln in lines]


def _break_sts_id(lines: list[str]) -> list[str]:
    return [re.sub(r"id=\w+", "id=20240101old", ln) for ln in lines]


def _break_dmarc(lines: list[str]) -> list[str]:
    return [re.sub(r'"v=DMARC1; [^"]*"', '"v=DMARC1; p=whatever"', ln) for ln in lines]


@pytest.mark.parametrize("check,breaker", [
    ("tlsa", _break_tlsa), ("spf", _break_spf), ("mta-sts", _break_sts_id),
    ("dmarc", _break_dmarc)])
def test_one_broken_record_fails_exactly_its_check(box: Box, check: str,
                                                   breaker: Callable[[list[str]], list[str]]
                                                   ) -> None:
    broken = breaker(box.records)
    assert broken != box.records
    lab = box.start_lab(broken)
    try:
        status, report = box.check()
    finally:
        lab.stop()
        assert box.lab is not None
        host, port = box.lab.resolver_address  # back to the good zone for other tests
        box.config.write_text(re.sub(r'nameservers = \["[^"]*"\]',
                                     f'nameservers = ["{host}:{port}"]', box.config.read_text()))
    statuses = _statuses(report)
    failing = sorted(k for k, v in statuses.items() if v != "OK")
    assert status == 1 and failing == [check], json.dumps(report, indent=1)
    (row,) = [r for r in report["results"] if r["check"] == check]
    assert row["status"] == "ERROR" and row["fix"].startswith("publish:")


def test_posttls_finger_verifies_mxd_with_dane(box: Box, tmp_path: Path) -> None:
    """Postfix's posttls-finger, resolving through the lab, finds the MX and its TLSA records
    and verifies mxd's certificate with DANE-EE."""
    finger = require_tool("posttls-finger")
    assert box.lab is not None
    config = tmp_path / "pf"
    config.mkdir()
    (config / "main.cf").write_text("dnssec_probe =\ncompatibility_level = 3.6\n"
                                    "smtp_dns_support_level = dnssec\n")
    proc = subprocess.run(box.lab.wrap([finger, "-c", "-l", "dane", "-L", "summary,certmatch",
                                        DOMAIN]),
                          env={**os.environ, "MAIL_CONFIG": str(config)}, capture_output=True,
                          text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert "Matched DANE EE" in out and "Verified TLS connection established" in out, out


POSTFIX_DANE = """relay_domains = {domain}
smtp_dns_support_level = dnssec
smtp_tls_security_level = dane
smtp_tls_loglevel = 1
smtpd_tls_security_level = none
"""


@pytest.fixture
def postfix_dir() -> Iterator[Path]:
    """A directory Postfix's unprivileged processes can reach (pytest's is mode 0700)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="mxd-postfix-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_postfix_delivers_with_dane_and_logs_verified(box: Box, postfix_dir: Path) -> None:
    """A real Postfix with smtp_tls_security_level = dane relays a message for example.test:
    it finds mxd through the signed MX and TLSA records, logs "Verified TLS connection
    established", and the message reaches the account's INBOX."""
    postfix = require_tool("postfix")
    assert box.lab is not None
    tmp_path = postfix_dir
    conf, qdir, ddir = tmp_path / "conf", tmp_path / "q", tmp_path / "d"
    for d in (conf, qdir, ddir):
        d.mkdir()
    shutil.chown(ddir, "postfix")
    inport = free_port()
    (conf / "main.cf").write_text(postfix_main_cf(
        qdir, ddir, tmp_path / "postfix.log", "relay.client.test",
        POSTFIX_DANE.format(domain=DOMAIN)))
    (conf / "master.cf").write_text(postfix_master_cf(inport))
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    started = subprocess.run(box.lab.wrap([postfix, "-c", str(conf), "start"]), env=env,
                             capture_output=True, text=True, timeout=60)
    log = tmp_path / "postfix.log"
    assert started.returncode == 0, started.stderr + (log.read_text() if log.exists() else "")
    log = tmp_path / "postfix.log"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", inport, timeout=10) as s:
                    s.sendmail("sender@client.test", [f"you@{DOMAIN}"],
                               b"From: sender@client.test\r\nTo: you@example.test\r\n"
                               b"Subject: over DANE\r\n\r\nhello\r\n")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        deadline = time.monotonic() + 60
        text = ""
        while "status=sent" not in text and time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "status=deferred" in text or "status=bounced" in text:
                break
            time.sleep(0.2)
        assert "Verified TLS connection established to mx.example.test" in text, text
        assert "status=sent" in text, text + box.log()
        _assert_in_inbox(box, "over DANE")
    finally:
        subprocess.run([postfix, "-c", str(conf), "stop"], env=env, capture_output=True,
                       timeout=60)


def _assert_in_inbox(box: Box, subject: str) -> None:
    """Log in over IMAPS with the password quickstart printed and find the message."""
    import imaplib

    password = next(ln.split()[1] for ln in box.quickstart_output.splitlines()
                    if ln.strip().startswith("password"))
    ctx = ssl.create_default_context(cafile=str(box.ca_file()))
    ctx.check_hostname = False  # connecting by address; the chain is still verified
    with imaplib.IMAP4_SSL(box.addr, box.ports["imaps"], ssl_context=ctx, timeout=10) as imap:
        imap.login(f"you@{DOMAIN}", password)
        imap.select("INBOX")
        typ, data = imap.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK" and data[0].split(), data


def test_autoconfig_xml_over_https(box: Box) -> None:
    """Thunderbird's request (HTTPS to autoconfig.<domain>, emailaddress query) gets a
    clientConfig document of the documented shape; POX autodiscover answers too."""
    ctx = ssl.create_default_context(cafile=str(box.ca_file()))
    port = box.ports["https"]
    name = f"autoconfig.{DOMAIN}"

    class Conn(http.client.HTTPSConnection):
        """HTTPS to mxd's address with SNI and certificate check for ``name``."""

        def connect(self) -> None:
            sock = socket.create_connection((box.addr, port), 10)
            self.sock = ctx.wrap_socket(sock, server_hostname=name)

    conn = Conn(name, port, context=ctx, timeout=10)
    conn.request("GET", f"/mail/config-v1.1.xml?emailaddress=you%40{DOMAIN}")
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200 and resp.headers["content-type"].startswith("application/xml")
    _validate_clientconfig(ET.fromstring(body), box)
    conn.request("POST", "/autodiscover/autodiscover.xml",
                 body=b'<Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
                 b'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>'
                 b'you@example.test</EMailAddress></Request></Autodiscover>')
    resp = conn.getresponse()
    assert resp.status == 200 and b"<Server>mx.example.test</Server>" in resp.read()
    conn.close()


SCHEMA = Path(__file__).resolve().parents[1] / "data" / "autoconfig-v1.1.xsd"


def _validate_clientconfig(root: ET.Element, box: Box) -> None:
    """Valid against the documented format (tests/data/autoconfig-v1.1.xsd, checked with
    lxml), and pointing only at mxd's TLS ports."""
    lxml = require_module("lxml.etree")
    etree = lxml.etree
    schema = etree.XMLSchema(etree.parse(str(SCHEMA)))
    doc = etree.fromstring(ET.tostring(root))
    assert schema.validate(doc), schema.error_log
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    (provider,) = root.findall("emailProvider")
    assert provider.get("id") and provider.findtext("domain") == DOMAIN
    assert provider.findtext("displayName")
    servers = provider.findall("incomingServer") + provider.findall("outgoingServer")
    assert servers
    allowed = {"hostname", "port", "socketType", "username", "authentication"}
    for s in servers:
        assert s.get("type") in ("imap", "pop3", "smtp")
        assert {c.tag for c in s} <= allowed
        assert s.findtext("hostname") == HOST
        assert 0 < int(s.findtext("port") or 0) < 65536
        assert s.findtext("socketType") in ("SSL", "STARTTLS")  # never plain
        assert s.findtext("authentication") in ("password-cleartext", "password-encrypted")
    ports = {(s.get("type"), int(s.findtext("port") or 0)) for s in servers}
    assert ("imap", box.ports["imaps"]) in ports and ("smtp", box.ports["submissions"]) in ports
