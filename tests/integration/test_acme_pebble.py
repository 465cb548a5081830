"""ACME against pebble (Let's Encrypt's test CA, from Debian), with twistd mxd.

pebble resolves the names through the DNSSEC lab's unbound (``-dnsserver``) and validates
on mxd's https listener (TLS-ALPN-01) or http listener (HTTP-01); its ports are free ports
named in its config file.  Certificates must come for the host name and the mta-sts. and
autoconfig. names, be served by SNI, chain to pebble's root, and be for the pre-generated
host keys — also after a renewal (pebble's certificateValidityPeriod makes them short-lived,
so the 2/3-of-lifetime renewal happens within the test).
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store

from mxd.certs import spki_sha256_of_cert
from tests.golive_helpers import host_keys
from tests.integration.dnslab import DNSLab, ZoneSpec
from tests.integration.pebblelab import Pebble
from tests.integration.tools import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
NAMES = ("mx.example.test", "mta-sts.example.test", "autoconfig.example.test")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSLab]:
    d = DNSLab(tmp_path_factory.mktemp("acmelab"))
    d.start({"example.test": ZoneSpec(records=[
        "@ MX 10 mx", "mx A 127.0.0.1", "mta-sts A 127.0.0.1", "autoconfig A 127.0.0.1"])})
    try:
        yield d
    finally:
        d.stop()


class Server:
    """twistd mxd with ACME on, host keys, https/http/smtp listeners."""

    def __init__(self, tmp: Path, lab: DNSLab, pebble: Pebble, challenges: list[str],
                 ports: dict[str, int], domains: tuple[str, ...] = ("example.test",)) -> None:
        self.tmp = tmp
        self.keys = host_keys(tmp)
        self.ports = ports
        host, port = lab.resolver_address
        listeners = "".join(f'[[listeners]]\nprotocol = "{p}"\naddress = "127.0.0.1"\n'
                            f"port = {n}\n" for p, n in ports.items())
        self.config = tmp / "mxd.toml"
        self.config.write_text(f'''hostname = "mx.example.test"
data_dir = "{tmp / 'data'}"
[tls]
host_keys = [{", ".join(f'"{k.path}"' for k in self.keys)}]
[acme]
enabled = true
directory_url = "{pebble.directory}"
ca_file = "{pebble.ca_file}"
contact = "you@example.test"
challenges = {json.dumps(challenges)}
retry_min = 1.0
retry_max = 5.0
[domains]
names = {json.dumps(list(domains))}
[resolver]
nameservers = ["{host}:{port}"]
[queue]
hold_all = true
''' + listeners)
        self.log_path = tmp / "mxd.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "mxd", "--config",
             str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp)

    def cert_file(self, name: str, kind: str) -> Path:
        return self.tmp / "data" / "acme" / "certs" / f"{name}.{kind}.pem"

    def wait_for(self, paths: list[Path], timeout: float, pebble: Pebble,
                 newer_than: dict[Path, int] | None = None) -> None:
        """Poll until every certificate file exists (with ``newer_than``: holds another
        serial) and the server has logged that it switched to it (the file is written
        first, then the certificate is served)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_path.read_text(errors="replace")
            ready = []
            for p in paths:
                name, kind, _ = p.name.rsplit(".", 2)
                installed = log.count(f"ACME: new certificate for {name} ({kind})")
                if p.exists() and installed >= (2 if newer_than else 1) and (
                        newer_than is None or _leaf(p).serial_number != newer_than[p]):
                    ready.append(p)
            if len(ready) == len(paths):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"certificates missing: {sorted(set(paths) - set(ready))}"
                                     f"\n--- mxd\n{self.log()}\n--- pebble\n{pebble.output()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _served(port: int, sni: str, root: x509.Certificate,
            chains: list[Path]) -> list[x509.Certificate]:
    """Handshake with SNI; the leaf, verified to chain to pebble's root (through the
    intermediates in ``chains``, the certificate files) and to be for ``sni``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified below, see _verify
    with socket.create_connection(("127.0.0.1", port), 10) as s, \
            ctx.wrap_socket(s, server_hostname=sni) as t:
        der = t.getpeercert(binary_form=True)
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    _verify(leaf, sni, root, chains)
    return [leaf]


def _verify(leaf: x509.Certificate, name: str, root: x509.Certificate,
            chains: list[Path]) -> None:
    """Path validation to ``root`` and the name check, as a TLS client makes them, but at
    a time within the leaf's lifetime rather than now: with pebble's 12 s lifetimes a
    certificate may have expired by the time the test looks at it on a loaded machine,
    while its renewal waits for the orders of other names (they run one at a time)."""
    intermediates = [c for p in chains if p.exists()
                     for c in x509.load_pem_x509_certificates(p.read_bytes())[1:]]
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    verifier = (PolicyBuilder().store(Store([root])).time(start + (end - start) / 2)
                .build_server_verifier(DNSName(name)))
    verifier.verify(leaf, intermediates)  # raises VerificationError


def _smtp_certificate(port: int, name: str, root: x509.Certificate,
                      chains: list[Path], within: float = 30.0) -> x509.Certificate:
    """The leaf STARTTLS presents for SNI ``name``, once it is no longer the self-signed
    one (polled: the worker switches within about a second of the files), verified as
    in _served."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified below
    deadline = time.monotonic() + within
    while True:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp._host = name  # the SNI smtplib sends
            smtp.starttls(context=ctx)
            der = smtp.sock.getpeercert(binary_form=True)
        assert der is not None
        leaf = x509.load_der_x509_certificate(der)
        if leaf.issuer != leaf.subject:
            _verify(leaf, name, root, chains)
            return leaf
        assert time.monotonic() < deadline, "STARTTLS still presents the self-signed certificate"
        time.sleep(0.1)


@pytest.fixture
def world(tmp_path: Path, lab: DNSLab) -> Iterator[dict[str, Any]]:
    made: dict[str, Any] = {}
    yield made
    if "server" in made:
        made["server"].stop()
    if "pebble" in made:
        made["pebble"].stop()


def _start(world: dict[str, Any], tmp: Path, lab: DNSLab, challenges: list[str],
           protocols: list[str], validity: int,
           domains: tuple[str, ...] = ("example.test",)) -> tuple[Pebble, Server]:
    ports = {p: free_port() for p in protocols}
    pebble = Pebble(tmp, lab, ports.get("http", free_port()), ports.get("https", free_port()),
                    validity)
    world["pebble"] = pebble
    server = Server(tmp, lab, pebble, challenges, ports, domains)
    world["server"] = server
    return pebble, server


def test_tls_alpn_01_certificates_for_every_name_and_renewal_keeps_the_key(
        world: dict[str, Any], tmp_path: Path, lab: DNSLab) -> None:
    """Only TLS-ALPN-01 and no http listener: mxd gets certificates for the host, mta-sts.
    and autoconfig. names for both host keys, serves each by SNI, and after pebble's short
    lifetime runs 2/3 out it has renewed them — on the same public keys."""
    pebble, server = _start(world, tmp_path, lab, ["tls-alpn-01"], ["https", "smtp"],
                            validity=12)
    files = [server.cert_file(n, k.kind.value) for n in NAMES for k in server.keys]
    server.wait_for(files, 60, pebble)
    root = pebble.root()
    spki = {k.kind.value: k.spki_sha256 for k in server.keys}
    for name in NAMES:
        for k in server.keys:
            leaf = _leaf(server.cert_file(name, k.kind.value))
            assert spki_sha256_of_cert(leaf) == spki[k.kind.value]
            assert leaf.issuer != leaf.subject
        (served,) = _served(server.ports["https"], name, root,
                            [server.cert_file(name, k.kind.value) for k in server.keys])
        names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert names.value.get_values_for_type(x509.DNSName) == [name]
        assert spki_sha256_of_cert(served) in spki.values()
    assert "http-01" not in pebble.output().lower().replace("tls-alpn-01", "")
    assert "answering ACME TLS-ALPN-01 validation for mta-sts.example.test" in server.log()
    # The mail listeners present the same ACME certificates (SNI on STARTTLS); they are
    # served by the worker processes, which look for new certificate files every second.
    leaf = _smtp_certificate(server.ports["smtp"], "mx.example.test", root,
                             [server.cert_file("mx.example.test", k.kind.value)
                              for k in server.keys])
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == ["mx.example.test"]
    assert spki_sha256_of_cert(leaf) in spki.values()
    # Renewal at 2/3 of 12 s: new serials, same keys, the old certificate served until then.
    first = {p: _leaf(p).serial_number for p in files}
    mx = server.cert_file("mx.example.test", "ecdsap256")
    server.wait_for([mx], 60, pebble, newer_than=first)
    renewed = _leaf(mx)
    assert renewed.serial_number != first[mx]
    assert spki_sha256_of_cert(renewed) == spki["ecdsap256"]
    (served,) = _served(server.ports["https"], "mx.example.test", root,
                        [server.cert_file("mx.example.test", k.kind.value) for k in server.keys])
    assert spki_sha256_of_cert(served) in spki.values()
    assert "ACME: new certificate for mx.example.test (ecdsap256)" in server.log()


def test_http_01_certificates(world: dict[str, Any], tmp_path: Path, lab: DNSLab) -> None:
    """Only HTTP-01: pebble fetches the key authorizations from mxd's http listener."""
    pebble, server = _start(world, tmp_path, lab, ["http-01"], ["https", "http"],
                            validity=3600)
    files = [server.cert_file(n, k.kind.value) for n in NAMES[:2] for k in server.keys]
    server.wait_for(files, 60, pebble)
    assert "answered ACME HTTP-01 challenge for mta-sts.example.test" in server.log()
    root = pebble.root()
    (served,) = _served(server.ports["https"], "mta-sts.example.test", root,
                        [server.cert_file("mta-sts.example.test", k.kind.value)
                         for k in server.keys])
    assert spki_sha256_of_cert(served) in {k.spki_sha256 for k in server.keys}
    account = json.loads((tmp_path / "data" / "acme" / "account.json").read_text())
    assert account["uri"].startswith(f"https://127.0.0.1:{pebble.port}/")
    records = subprocess.run([str(VENV_BIN / "mxd"), "dns", "records", "example.test",
                              "--config", str(server.config)], capture_output=True,
                             text=True, timeout=60)
    assert f'accounturi={account["uri"]}' in records.stdout, records.stderr


def test_ca_down_keeps_the_self_signed_certificate_and_retries(
        world: dict[str, Any], tmp_path: Path, lab: DNSLab) -> None:
    """With the CA unreachable mxd still serves (self-signed on the host key), logs what
    went wrong and retries with back-off."""
    pebble, server = _start(world, tmp_path, lab, ["tls-alpn-01"], ["https"], validity=3600)
    pebble.stop()
    deadline = time.monotonic() + 30
    while "retry 2 in" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log()
    assert "is the CA reachable?" in log and "self-signed certificate stays in use" in log, log
    assert "retry 2 in" in log
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", server.ports["https"]), 10) as s, \
            ctx.wrap_socket(s, server_hostname="mx.example.test") as t:
        served = x509.load_der_x509_certificate(t.getpeercert(binary_form=True))
    assert served.issuer == served.subject
    assert spki_sha256_of_cert(served) in {k.spki_sha256 for k in server.keys}


def test_a_name_the_ca_cannot_validate_is_reported_and_others_still_issued(
        world: dict[str, Any], tmp_path: Path, lab: DNSLab) -> None:
    """A domain whose mta-sts. name does not resolve: the CA's validation error is logged
    with the name and a hint, retried later, and the other names get their certificates."""
    pebble, server = _start(world, tmp_path, lab, ["tls-alpn-01"], ["https"], validity=3600,
                            domains=("nowhere.test", "example.test"))
    good = [server.cert_file("mx.example.test", k.kind.value) for k in server.keys]
    server.wait_for(good, 60, pebble)
    deadline = time.monotonic() + 30
    while "validation failed: mta-sts.nowhere.test" not in server.log() and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log()
    line = next(ln for ln in log.splitlines() if "validation failed: mta-sts.nowhere.test" in ln)
    assert "self-signed certificate stays in use; retry 1 in" in line, line
    assert not server.cert_file("mta-sts.nowhere.test", "ecdsap256").exists()
