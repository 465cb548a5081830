"""A real OpenLDAP slapd on loopback for the LDAP directory's tests.

``SlapdLab`` writes a slapd.conf (core, cosine, inetorgperson, misc schemas plus a small
schema with RFC 3112 ``authPassword``, which OpenLDAP does not ship), loads a tree with
``slapadd``, and runs ``slapd -d stats`` in the foreground on two free loopback ports:
``ldap://`` (StartTLS available) and ``ldaps://``, with a certificate from the test CA.
Its stats log (every search filter it receives) is kept in ``slapd.log``.

The tree (base ``dc=example,dc=test``):

* ``cn=mxd`` — the service account mxd binds as;
* ``uid=alice`` — mail alice@example.test, aliases sales@ and info@, a userPassword;
* ``uid=carol`` — RFC 5803 SCRAM-SHA-256 and SCRAM-SHA-1 values and a userPassword;
* ``uid=dave`` — a userPassword but not in the ``cn=mail`` group (may not log in);
* ``cn=mail,ou=groups`` — groupOfNames with alice and carol.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.tools import STARTUP_TIMEOUT, free_port, require_tool

BASE = "dc=example,dc=test"
SERVICE_DN = f"cn=mxd,{BASE}"
SERVICE_PASSWORD = "svc-pass-1"
PASSWORDS = {"alice": "alice-pw-1", "carol": "carol-pw-1", "dave": "dave-pw-1"}

SCHEMA = """
attributetype ( 1.3.6.1.4.1.4203.1.3.4 NAME 'authPassword'
    DESC 'RFC 3112 authentication password (RFC 5803 SCRAM values)'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 )
objectclass ( 1.3.6.1.4.1.4203.1.4.7 NAME 'authPasswordObject'
    DESC 'RFC 3112 authPasswordObject' SUP top AUXILIARY MAY authPassword )
"""


class SlapdLab:
    def __init__(self, base: Path, tls_files: dict[str, Path], scram_values: list[str],
                 sizelimit: str = "500") -> None:
        self.slapd = require_tool("slapd")
        self.slapadd = require_tool("slapadd")
        self.base = base
        self.tls_files = tls_files
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        self.log_path = base / "slapd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)
        (base / "db").mkdir(exist_ok=True)
        (base / "mxdtest.schema").write_text(SCHEMA)
        # slapd (GnuTLS) reads the key and certs itself.
        self.conf = base / "slapd.conf"
        self.conf.write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/misc.schema
include {base}/mxdtest.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {base}/slapd.pid
TLSCACertificateFile {tls_files["ca"]}
TLSCertificateFile {tls_files["cert"]}
TLSCertificateKeyFile {tls_files["key"]}
sizelimit {sizelimit}
database mdb
maxsize 10485760
suffix "{BASE}"
rootdn "cn=admin,{BASE}"
rootpw admin-secret
directory {base}/db
access to attrs=userPassword by anonymous auth by * none
access to * by * read
""")
        self.password_file = base / "ldap-password"
        self.password_file.write_text(SERVICE_PASSWORD + "\n")
        self.password_file.chmod(0o600)
        ldif = base / "tree.ldif"
        ldif.write_text(self.tree(scram_values))
        r = subprocess.run([self.slapadd, "-f", str(self.conf), "-l", str(ldif)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    @staticmethod
    def tree(scram_values: list[str]) -> str:
        def person(uid: str, mails: list[str], aliases: list[str], extra: str = "") -> str:
            lines = [f"dn: uid={uid},ou=people,{BASE}", "objectClass: inetOrgPerson",
                     "objectClass: inetLocalMailRecipient", f"uid: {uid}", f"cn: {uid}",
                     f"sn: {uid}", f"userPassword: {PASSWORDS[uid]}"]
            lines += [f"mail: {m}" for m in mails]
            lines += [f"mailLocalAddress: {a}" for a in aliases]
            return "\n".join(lines) + extra + "\n"

        carol_extra = "\nobjectClass: authPasswordObject" + "".join(
            f"\nauthPassword: {v}" for v in scram_values)
        return "\n".join([
            f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n"
            "dc: example\n",
            f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n",
            f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: mxd\nuserPassword: {SERVICE_PASSWORD}\n",
            person("alice", ["alice@example.test"], ["sales@example.test", "info@example.test"]),
            person("carol", ["carol@example.test"], [], carol_extra),
            person("dave", ["dave@example.test"], []),
            f"dn: cn=mail,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: mail\n"
            f"member: uid=alice,ou=people,{BASE}\nmember: uid=carol,ou=people,{BASE}\n",
        ])

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.slapd, "-d", "stats", "-f", str(self.conf), "-h",
             f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        for port in (self.ldap_port, self.ldaps_port):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"slapd exited: {self.log_tail()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"slapd did not listen: {self.log_tail()}") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def mxd_config(self, *, starttls: bool = False, uris: list[str] | None = None,
                   extra: str = "") -> str:
        """The [directory] and [ldap] sections for an mxd using this slapd."""
        if uris is None:
            uris = ([f"ldap://127.0.0.1:{self.ldap_port}"] if starttls
                    else [f"ldaps://127.0.0.1:{self.ldaps_port}"])
        quoted = ", ".join(f'"{u}"' for u in uris)
        return f'''
[directory]
backend = "ldap"
[ldap]
uris = [{quoted}]
starttls = {"true" if starttls else "false"}
ca_file = "{self.tls_files["ca"]}"
bind_dn = "{SERVICE_DN}"
bind_password_file = "{self.password_file}"
base_dn = "ou=people,{BASE}"
group_filter = "(&(objectClass=groupOfNames)(cn=mail)(member=%D))"
group_base_dn = "ou=groups,{BASE}"
timeout = 3.0
cache_ttl = 60.0
negative_cache_ttl = 5.0
{extra}
'''
