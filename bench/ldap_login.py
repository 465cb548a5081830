"""LDAP login benchmark: IMAP LOGIN per second with accounts in LDAP, against Dovecot.

One slapd (OpenLDAP 2.5, ldaps on loopback, the tree of tests/integration/ldaplab.py)
serves every server that needs a directory:

* ``mxd-ldap``: ``twistd mxd`` with ``[directory] backend = "ldap"`` (service search with
  the group filter, cached ``cache_ttl`` = 60 s; each login binds as the user);
* ``mxd-ldap-nocache``: the same with ``cache_ttl = 0`` (search + group search + bind on
  every login);
* ``mxd-local``: ``twistd mxd`` with the local directory (scrypt on the hashing pool; a
  successful check is remembered for ``[auth] login_cache_ttl``, so repeated logins of
  the same users skip scrypt), and ``mxd-local-nocache`` with ``login_cache_ttl = 0``
  (scrypt on every login);
* ``dovecot-ldap``: Dovecot 2.3 with an LDAP passdb, ``auth_bind = yes`` (a search and a
  bind as the user per login, as mxd does; no auth cache), same slapd, same filter shape;
  ``dovecot-local``: the same Dovecot with a passwd-file (PLAIN scheme: no hashing), to
  show what LDAP costs Dovecot.  Dovecot runs in its default mode (a login process per
  connection, an imap process per login), which is part of its figures.

Each client thread loops: TLS connect (IMAPS), LOGIN, LOGOUT.  Reported per server: logins
per second over ``--seconds`` with ``--clients`` threads, the LOGIN command's latency (p50,
p90; the TLS handshake excluded), and for mxd the LDAP cache hit ratio from its
``/metrics`` (``mxd_ldap_cache_total``).  ``--rounds`` interleaves the servers; medians are
printed with ratios against dovecot-ldap.  The machine may be shared with other work: say
so next to any figures.

    .venv/bin/python bench/ldap_login.py [--seconds 10] [--clients 4] [--rounds 3]

``--only NAME,...`` runs some of the servers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Keep bench/ off sys.path: a script named like a stdlib module would shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from mxd.directory.authpassword import derive_values  # noqa: E402
from tests.integration.ldaplab import (  # noqa: E402
    BASE,
    PASSWORDS,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SlapdLab,
)
from tests.integration.mxdserver import MxdServer  # noqa: E402

USERS = ("alice", "carol")


def tls_files(d: Path) -> dict[str, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "mx.example.test")
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    paths["cert"].write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- servers ------------------------------------------------------------------------------


class Dovecot:
    def __init__(self, base: Path, tls: dict[str, Path], lab: SlapdLab, ldap: bool) -> None:
        self.name = "dovecot-ldap" if ldap else "dovecot-local"
        d = base / self.name
        (d / "run").mkdir(parents=True)
        (d / "home").mkdir()
        subprocess.run(["chown", "-R", "nobody:nogroup", str(d / "home")], check=True)
        self.dir, self.port, self.proc = d, free_port(), None
        (d / "ldap.conf.ext").write_text(f"""
uris = ldaps://127.0.0.1:{lab.ldaps_port}
tls_ca_cert_file = {tls['ca']}
tls_require_cert = hard
dn = {SERVICE_DN}
dnpass = {SERVICE_PASSWORD}
auth_bind = yes
base = ou=people,{BASE}
pass_filter = (&(objectClass=inetOrgPerson)(|(uid=%u)(mail=%u)))
pass_attrs = uid=user
""")
        (d / "ldap.conf.ext").chmod(0o644)  # throwaway service password, temp dir
        (d / "passwd").write_text("".join(f"{u}:{{PLAIN}}{PASSWORDS[u]}\n" for u in USERS))
        passdb = (f"driver = ldap\n  args = {d}/ldap.conf.ext" if ldap
                  else f"driver = passwd-file\n  args = scheme=PLAIN {d}/passwd")
        (d / "dovecot.conf").write_text(f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{tls['cert']}
ssl_key = <{tls['key']}
auth_mechanisms = plain login
passdb {{
  {passdb}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/home/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 1
default_vsz_limit = 0
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}
}}
""")

    def start(self) -> None:
        conf = self.dir / "dovecot.conf"
        new_port = free_port()  # a new port every start, as for mxd
        conf.write_text(conf.read_text().replace(f"port = {self.port}\n", f"port = {new_port}\n"))
        self.port = new_port
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "dovecot.err", "ab"))
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cache_ratio(self) -> float | None:
        return None


class Mxd:
    def __init__(self, name: str, base: Path, tls: dict[str, Path], extra: str,
                 local: bool) -> None:
        self.name = name
        d = base / name
        d.mkdir()
        self.server = MxdServer(d, tls, extra_config=extra + "\n[metrics]\nenabled = true\n")
        if local:
            for u in USERS:
                self.server.add_account(u, PASSWORDS[u], f"{u}@example.test")
        self.port = self.server.ports["imaps"]

    def start(self) -> None:
        # New free ports for every start, and again when one was taken meanwhile: other
        # people's tests pick free ports on this machine too.
        for attempt in range(3):
            self.server.ports = {name: free_port() for name in self.server.ports}
            self.server.write_config()
            self.port = self.server.ports["imaps"]
            try:
                self.server.start()
                return
            except RuntimeError:
                if attempt == 2:
                    raise
                self.server.stop()

    def stop(self) -> None:
        self.server.stop()

    def cache_ratio(self) -> float | None:
        url = f"http://127.0.0.1:{self.server.ports['admin']}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            return None
        counts = {"hit": 0.0, "miss": 0.0}
        for m in re.finditer(r'^mxd_ldap_cache_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
            result = re.search(r'result="(\w+)"', m.group(1))
            if result and result.group(1) in counts:
                counts[result.group(1)] += float(m.group(2))
        total = counts["hit"] + counts["miss"]
        return counts["hit"] / total if total else None


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)


# -- the client ---------------------------------------------------------------------------


def _read_until(sock: ssl.SSLSocket, tag: bytes) -> bytes:
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
        for line in buf.split(b"\r\n"):
            if line.startswith(tag + b" "):
                return line
        if tag == b"*" and buf.startswith(b"* ") and b"\r\n" in buf:
            return buf


def one_login(port: int, ctx: ssl.SSLContext, user: str, password: str) -> float:
    """Connect, LOGIN, LOGOUT; returns the LOGIN command's latency (raises on failure)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        _read_until(s, b"*")
        t0 = time.perf_counter()
        s.sendall(f'a LOGIN "{user}" "{password}"\r\n'.encode())
        line = _read_until(s, b"a")
        dt = time.perf_counter() - t0
        if not line.startswith(b"a OK"):
            raise RuntimeError(f"LOGIN failed: {line!r}")
        s.sendall(b"b LOGOUT\r\n")
        _read_until(s, b"b")
    return dt


def run_load(port: int, ca: Path, seconds: float, clients: int) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(ca))
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(i: int) -> None:
        user = USERS[i % len(USERS)]
        while time.monotonic() < stop_at:
            try:
                dt = one_login(port, ctx, user, PASSWORDS[user])
            except Exception as e:
                with lock:
                    errors.append(str(e))
                if len(errors) > 20:
                    return
                continue
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.monotonic() - t0
    if errors:
        print(f"  {len(errors)} errors, e.g. {errors[0]}", flush=True)
    if not latencies:
        return {"logins/s": 0.0}
    q = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else [latencies[0]] * 9
    return {"logins/s": len(latencies) / elapsed, "login p50 ms": q[4] * 1000,
            "login p90 ms": q[8] * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated server names")
    args = ap.parse_args()
    for tool in ("slapd", "dovecot"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            sys.exit(f"{tool} is not installed (make test-deps)")
    if not Path("/usr/lib/dovecot/modules/auth/libauthdb_ldap.so").exists():
        sys.exit("Dovecot's LDAP passdb is not installed (dovecot-ldap)")
    base = Path(tempfile.mkdtemp(prefix="mxd-bench-ldap-"))
    base.chmod(0o755)  # Dovecot's auth process (not root) reads the CA file
    tls = tls_files(base)
    lab = SlapdLab(base / "slapd", tls, derive_values(PASSWORDS["carol"]))
    lab.start()
    ldap_cfg = lab.mxd_config()
    servers = [
        Mxd("mxd-ldap", base, tls, ldap_cfg, local=False),
        Mxd("mxd-ldap-nocache", base, tls,
            ldap_cfg.replace("cache_ttl = 60.0", "cache_ttl = 0.0")
            .replace("negative_cache_ttl = 5.0", "negative_cache_ttl = 0.0"), local=False),
        Mxd("mxd-local", base, tls, "", local=True),
        Mxd("mxd-local-nocache", base, tls, "[auth]\nlogin_cache_ttl = 0.0\n", local=True),
        Dovecot(base, tls, lab, ldap=True),
        Dovecot(base, tls, lab, ldap=False),
    ]
    if args.only:
        servers = [s for s in servers if s.name in args.only.split(",")]
    results: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    ratios: dict[str, list[float]] = {}
    try:
        for rnd in range(args.rounds):
            order = servers if rnd % 2 == 0 else list(reversed(servers))
            for s in order:
                s.start()
                try:
                    one_login(s.port, ssl.create_default_context(cafile=str(tls["ca"])),
                              "alice", PASSWORDS["alice"])  # warm up, check it works
                    r = run_load(s.port, tls["ca"], args.seconds, args.clients)
                    ratio = s.cache_ratio()
                    if ratio is not None:
                        ratios.setdefault(s.name, []).append(ratio)
                finally:
                    s.stop()
                results[s.name].append(r)
                print(f"round {rnd + 1} {s.name}: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in r.items()), flush=True)
    finally:
        lab.stop()
    print(f"\nmedians of {args.rounds} rounds, {args.clients} clients x {args.seconds:.0f} s "
          "(TLS connect + LOGIN + LOGOUT per login; shared, loaded machine):")
    peer = (statistics.median(r["logins/s"] for r in results["dovecot-ldap"])
            if results.get("dovecot-ldap") else 0.0)
    for name, rs in results.items():
        med = {k: statistics.median(r.get(k, 0.0) for r in rs) for k in rs[0]}
        extra = f", vs dovecot-ldap {med['logins/s'] / peer:.2f}x" if peer else ""
        if name in ratios:
            extra += f", LDAP cache hit ratio {statistics.median(ratios[name]):.3f}"
        print(f"  {name:18s} " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()) + extra)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
