"""pebble (Let's Encrypt's ACME test server, Debian package) on free loopback ports.

``Pebble(tmp, lab, http_port, tls_port, validity)`` writes pebble's config file (its API,
management, HTTP-01 and TLS-ALPN-01 ports), gives it a trustme certificate for its API
(``ca_file`` verifies it), resolves through the DNS lab (``-dnsserver``), and disables the
random validation sleeps and nonce rejections that would make tests slow or flaky.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509

from tests.integration.dnslab import DNSLab
from tests.integration.tools import STARTUP_TIMEOUT, free_port, require_module, require_tool


class Pebble:
    def __init__(self, tmp: Path, lab: DNSLab, http_port: int, tls_port: int,
                 validity: int) -> None:
        trustme = require_module("trustme")
        self.binary = require_tool("pebble")
        self.tmp = tmp
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = tmp / "pebble-api-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf.cert_chain_pems[0].write_to_path(str(tmp / "pebble-cert.pem"))
        leaf.private_key_pem.write_to_path(str(tmp / "pebble-key.pem"))
        self.port, self.mgmt = free_port(), free_port()
        (tmp / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(tmp / "pebble-cert.pem"),
            "privateKey": str(tmp / "pebble-key.pem"),
            "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": validity}}))
        host, port = lab.resolver_address
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_VA_ALWAYS_VALID="0",
                   PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.log = open(tmp / "pebble.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "-config", str(tmp / "pebble.json"), "-dnsserver",
             f"{host}:{port}"], stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pebble did not start: " + self.output()) from None
                time.sleep(0.05)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def root(self) -> x509.Certificate:
        """The root pebble issues under (a new one each run), from its management API."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt}/roots/0", context=ctx,
                                    timeout=10) as r:
            return x509.load_pem_x509_certificate(r.read())

    def output(self) -> str:
        return (self.tmp / "pebble.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
