"""IMAP benchmark: mxd against Dovecot 2.3 on loopback with the same messages.

Measures, for an INBOX of N messages (``--messages``, default 10,000):
  * ``UID FETCH 1:* (FLAGS ENVELOPE UID)`` (first run "cold", second "warm") and a
    full-body fetch of 500 messages (``FETCH 1:500 BODY.PEEK[]``);
  * ``--select-connections`` TLS connections (default 200) that LOGIN and SELECT the
    INBOX and stay: total connect+LOGIN+SELECT time and memory growth per connection;
  * mbsync (isync, ``FSync no``): pull the INBOX into an empty Maildir, a no-change
    re-sync, and a push of ``--push-messages`` (default 500): wall time and server CPU;
  * APPEND of ``--append-messages`` (default 10,000) with stock imaplib (Nagle on, one
    at a time) and with a pipelining client (LITERAL+, 32 in flight): msg/s and server
    CPU per message;
  * ``--mixed-clients`` (10) stock imaplib clients looping LOGIN, SELECT, FETCH, STORE,
    EXPUNGE, APPEND, LOGOUT over TLS for ``--mixed-seconds`` (60) on a mailbox of 200
    messages: LOGIN p50/p99, commands/s per command and server CPU per command;
  * memory of ``--connections`` idle authenticated TLS connections (default 0: skipped):
    the growth of the servers' resident memory (RSS, and PSS, which counts shared pages
    once) divided by the count.

Server CPU is user+system time of the server's process tree, counting Dovecot's exited
per-connection processes through their parents.  mxd runs as the composed server,
``twistd mxd`` with a generated config (an IMAPS listener; the account made by ``mxd
account add --password-stdin``, the INBOX delivered through the store API).  Dovecot runs
from a one-file config in a temp dir (mail in Maildir, mail processes as ``nobody``; its
default high-security login mode, one imap-login process per TLS connection, or
``--dovecot-performance-mode``).  Both serve implicit TLS on 127.0.0.1.

``--workers 1 2`` (the default) measures ``twistd mxd`` with ``[server] workers = 1`` (as
"mxd") and ``= 2`` (as "mxd-w2"; timing starts once both workers serve), so the mixed
workload and the rest show what worker processes bring.  ``--rounds N`` repeats everything N times, the servers interleaved in each round; every
round restarts each server, and Dovecot's index files are removed first, so each "cold"
figure is a first fetch with nothing derived from the messages cached (the operating
system's page cache is warm for both).  ``--sections`` picks some of fetch, sort,
compress, select, mbsync, append, mixed, idle (compress: COMPRESS=DEFLATE, RFC 4978, then
an envelope fetch and a full-body fetch of the whole INBOX; Dovecot with its imap_zlib
plugin at its default level 6, mxd at its own default, ``DeflateSettings.level``: 1).  ``--baseline-root DIR`` also measures an mxd source tree
from DIR (e.g. an older commit from ``git archive``) as "mxd-base".  Prints medians and
mxd/Dovecot ratios.  Stops by itself: every wait is bounded and the servers are killed at
the end.  The machine may be shared: say so next to any figures.

    .venv/bin/python bench/imap.py [--messages 10000] [--rounds 3]
    .venv/bin/python bench/imap.py --messages 2000 --append-messages 1000 \
        --mixed-seconds 10 --select-connections 50 --push-messages 100   # quick
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Keep bench/ off sys.path: a script named like a stdlib module would shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import imap_workloads as wl  # noqa: E402
from bench.imap_workloads import memory_kib  # noqa: E402

USER = "alice@example.test"
PASSWORD = "s3cret-pass"
WORDS = ("mail server transport security channel binding message folder client "
         "delivery report domain policy record header body lorem ipsum dolor sit amet").split()


# -- messages ------------------------------------------------------------------------------------

def make_messages(n: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        subj = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 8)))
        body = "\r\n".join(" ".join(rnd.choice(WORDS) for _ in range(12))
                           for _ in range(rnd.randint(5, 80)))
        hdr = (f"From: Sender {i} <sender{i % 97}@example.test>\r\n"
               f"To: Alice <alice@example.test>, bob{i % 13}@example.test\r\n"
               f"Cc: carol@example.test\r\n"
               f"Subject: {subj}\r\n"
               f"Date: Thu, {1 + i % 28:02d} Feb 2024 10:{i % 60:02d}:00 +0000\r\n"
               f"Message-ID: <{i}.bench@example.test>\r\n"
               f"MIME-Version: 1.0\r\n")
        if i % 5 == 0:
            att = os.urandom(rnd.randint(2000, 30000)).hex()
            msg = (hdr + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                   "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body +
                   "\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Transfer-Encoding: base64\r\n\r\n" + att + "\r\n--b1--\r\n")
        else:
            msg = hdr + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
        out.append(msg.encode())
    return out


# -- a minimal raw IMAP client -----------------------------------------------------------------------

class Raw:
    def __init__(self, port: int, ca: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=300),
                                    server_hostname="localhost")
        self.buf = b""
        self.n = 0
        self._until(b"\r\n")

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        i = self.buf.index(marker) + len(marker)
        data, self.buf = self.buf[:i], self.buf[i:]
        return data

    def cmd(self, text: str) -> bytes:
        """Send a command; return everything up to and including its tagged completion.
        (Searches for the tag at a line start; the bench's data cannot contain it.)"""
        self.n += 1
        tag = f"T{self.n}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        data = bytearray(b"\r\n")  # so that the marker also matches at the very start
        marker = b"\r\n" + tag + b" "
        while True:
            chunk = self.buf or self.sock.recv(1 << 20)
            self.buf = b""
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
            j = data.find(marker, max(0, len(data) - len(chunk) - len(marker)))
            if j >= 0:
                end = data.find(b"\r\n", j + 2)
                while end < 0:
                    data += self.sock.recv(65536)
                    end = data.find(b"\r\n", j + 2)
                line = bytes(data[j + 2:end])
                if not line.split(b" ")[1].startswith(b"OK"):
                    raise RuntimeError(line.decode())
                return bytes(data[2:])

    def close(self) -> None:
        self.sock.close()


def login(c: Raw) -> None:
    c.cmd(f'LOGIN "{USER}" "{PASSWORD}"')


# -- servers -----------------------------------------------------------------------------------------

def tls_files(d: Path) -> dict[str, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    paths["cert"].write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


POPULATE = r"""
import sys
from pathlib import Path
from twisted.internet import task
from twisted.internet.defer import gatherResults
from mxd.sasl.credentials import StoredSecrets
from mxd.store.interfaces import Delivery, MessageProps
from mxd.store.sqlite import SQLiteStore
try:
    from mxd.components import register_derivers
except ImportError:  # an older tree (--baseline-root) stores no derived data
    register_derivers = None

async def main(reactor):
    data, msgdir, user, pw = sys.argv[1:5]
    store = SQLiteStore(Path(data), reactor)
    if register_derivers is not None:
        register_derivers(store)  # as twistd mxd does: no backfill runs during the bench
    await store.open()
    acc = await store.get_account(user)
    if acc is None:
        acc = await store.add_account(user, StoredSecrets.derive(pw, iterations=4096).to_text())
    files = sorted(Path(msgdir).iterdir(), key=lambda p: int(p.name))
    for i in range(0, len(files), 64):
        ds = []
        for f in files[i:i + 64]:
            b = store.new_blob()
            b.write(f.read_bytes())
            ds.append(store.deliver(b, [Delivery(acc.id, "INBOX")], MessageProps()))
        await gatherResults(ds)
    await store.close()

task.react(lambda r: __import__("twisted.internet.defer", fromlist=["x"]).Deferred.fromCoroutine(main(r)))
"""


MXD_CONFIG = """
hostname = "localhost"
data_dir = "{data}"
[tls]
cert = "{cert}"
key = "{key}"
[domains]
names = ["example.test"]
[resolver]
nameservers = ["127.0.0.1:1"]
timeout = 1.0
[imap]
max_connections_per_ip = 100000
[[listeners]]
protocol = "imaps"
address = "127.0.0.1"
port = {port}
"""


class MxdServer:
    """``twistd mxd`` from the source tree ``root``, its store filled once."""

    def __init__(self, name: str, root: Path, base: Path, tls: dict[str, Path], msgdir: Path,
                 workers: int = 1) -> None:
        self.name = name
        self.root = root
        self.dir = base / name
        self.dir.mkdir()
        self.port = free_port()
        self.workers = workers
        self.config = self.dir / "mxd.toml"
        self.config.write_text(MXD_CONFIG.format(data=self.dir / "data", cert=tls["cert"],
                                                 key=tls["key"], port=self.port)
                               + (f"[server]\nworkers = {workers}\n" if workers else ""))
        self.env = {**os.environ, "PYTHONPATH": str(root)}
        bindir = Path(sys.executable).parent
        t0 = time.monotonic()
        subprocess.run([str(bindir / "mxd"), "account", "add", USER, "--password-stdin",
                        "--address", USER, "--config", str(self.config)],
                       input=PASSWORD + "\n", text=True, check=True, env=self.env, cwd=root,
                       timeout=120, capture_output=True)
        subprocess.run([sys.executable, "-c", POPULATE, str(self.dir / "data"), str(msgdir), USER,
                        PASSWORD], check=True, env=self.env, cwd=root, timeout=900)
        print(f"  {name}: store populated in {time.monotonic() - t0:.1f}s")
        # As README says to run it: mxd's log observer, so the [log] level applies (twistd's
        # own file observer writes every event, debug included).
        self.cmd = [str(bindir / "twistd"), "-n", "--pidfile=", f"--logfile={self.dir / 'mxd.log'}",
                    "--logger", "mxd.log.twistd_observer", "mxd", "--config", str(self.config)]

    def start(self) -> subprocess.Popen[bytes]:
        out = self.dir / "mxd.out"  # the worker processes' log lines (their stdout)
        offset = out.stat().st_size if out.exists() else 0
        proc = subprocess.Popen(self.cmd, cwd=self.root, env=self.env, stdout=open(out, "ab"),
                                stderr=open(self.dir / "mxd.err", "ab"))
        wait_listening(proc, self.port, 60, self.dir / "mxd.log")
        if self.workers > 1:  # the socket accepts before the workers serve: wait for them
            import re

            deadline = time.monotonic() + 60
            while len(set(re.findall(rb'msg="worker (\d+) serving',
                                     out.read_bytes()[offset:]))) < self.workers:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: {self.workers} workers did not start")
                time.sleep(0.05)
        return proc


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"server on port {port} did not start\n{tail}") from None
            time.sleep(0.05)


DOVECOT_PERFORMANCE_MODE = False


class DovecotServer:
    """Dovecot with a Maildir holding the same messages."""

    name = "dovecot"

    def __init__(self, base: Path, tls: dict[str, Path], msgdir: Path) -> None:
        self.dir, self.port = setup_dovecot(base, tls, msgdir)

    def start(self) -> subprocess.Popen[bytes]:
        # Cold: remove what Dovecot derived from the messages (index, cache, UID list).
        for f in (self.dir / "home").rglob("dovecot*"):
            if f.is_file():
                f.unlink()
        proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.dir / "dovecot.conf")],
                                stdout=subprocess.DEVNULL,
                                stderr=open(self.dir / "dovecot.err", "ab"))
        wait_listening(proc, self.port, 30, self.dir / "dovecot.log")
        return proc


def setup_dovecot(base: Path, tls: dict[str, Path], msgdir: Path) -> tuple[Path, int]:
    d = base / "dovecot"
    (d / "run").mkdir(parents=True)
    home = d / "home" / USER
    maildir = home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    files = sorted(msgdir.iterdir(), key=lambda p: int(p.name))
    for i, f in enumerate(files):
        size = f.stat().st_size
        shutil.copyfile(f, maildir / "cur" / f"{1700000000 + i}.M{i}P1.bench,S={size}:2,")
    subprocess.run(["chown", "-R", "nobody:nogroup", str(d / "home")], check=True)
    port = free_port()
    (d / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
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
  driver = passwd-file
  args = scheme=PLAIN {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/home/%u
}}
mail_location = maildir:~/Maildir
protocol imap {{
  mail_max_userip_connections = 100000
  mail_plugins = $mail_plugins imap_zlib
}}
first_valid_uid = 1
default_process_limit = 3000
default_client_limit = 7000
default_vsz_limit = 0
service imap-login {{
  {"service_count = 0" if DOVECOT_PERFORMANCE_MODE else ""}
  {"client_limit = 5000" if DOVECOT_PERFORMANCE_MODE else ""}
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
""")
    return d, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- measurements --------------------------------------------------------------------------------------

def timed(c: Raw, command: str, pid: int) -> tuple[float, int, float]:
    """(wall seconds, response bytes, server CPU seconds) of one command."""
    with wl.Measure(pid) as m:
        data = c.cmd(command)
    return m.wall, len(data), m.cpu


def fetch_bench(port: int, ca: Path, count: int, pid: int) -> dict[str, float]:
    c = Raw(port, ca)
    login(c)
    c.cmd("SELECT INBOX")
    cold, n1, cold_cpu = timed(c, "UID FETCH 1:* (FLAGS ENVELOPE UID)", pid)
    warm = min(timed(c, "UID FETCH 1:* (FLAGS ENVELOPE UID)", pid)[::2] for _ in range(3))
    n = min(500, count)
    bodies = min(timed(c, f"FETCH 1:{n} BODY.PEEK[]", pid)[::2] for _ in range(3))
    c.cmd("LOGOUT")
    c.close()
    return {"envelope_cold": cold, "envelope_cold_cpu": cold_cpu, "envelope_warm": warm[0],
            "envelope_warm_cpu": warm[1], "bodies_500": bodies[0], "bodies_500_cpu": bodies[1],
            "bytes": n1}


class _DeflateSocket:
    """A TLS socket under COMPRESS=DEFLATE (RFC 4978): raw DEFLATE both ways, each
    command sync-flushed.  Counts the compressed octets received."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.decomp = zlib.decompressobj(-15)
        self.raw_in = 0

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH))

    def recv(self, n: int) -> bytes:
        while True:
            raw = self.sock.recv(n)
            if not raw:
                return b""
            self.raw_in += len(raw)
            out = self.decomp.decompress(raw)
            if out:
                return out

    def close(self) -> None:
        self.sock.close()


def compress_bench(port: int, ca: Path, pid: int) -> dict[str, float]:
    """COMPRESS=DEFLATE, then ``UID FETCH 1:* (FLAGS ENVELOPE UID)`` and ``UID FETCH 1:*
    (UID BODY.PEEK[])`` of the whole INBOX (best of three after a first, warming run):
    wall time (the client's decompression included, the same for both servers), server
    CPU and the compressed octets."""
    c = Raw(port, ca)
    login(c)
    c.cmd("SELECT INBOX")
    c.cmd("COMPRESS DEFLATE")
    z = _DeflateSocket(c.sock)
    c.sock = z  # type: ignore[assignment]
    out: dict[str, float] = {}
    for key, command in (("z_envelope", "UID FETCH 1:* (FLAGS ENVELOPE UID)"),
                         ("z_bodies", "UID FETCH 1:* (UID BODY.PEEK[])")):
        c.cmd(command)
        before = z.raw_in
        best = min(timed(c, command, pid) for _ in range(3))
        out[key], out[f"{key}_cpu"] = best[0], best[2]
        out[f"{key}_ratio"] = best[1] / max(1, (z.raw_in - before) / 3)
    c.cmd("LOGOUT")
    c.close()
    return out


def sort_bench(port: int, ca: Path, pid: int) -> dict[str, float]:
    """UID SORT (DATE) and UID THREAD REFERENCES over the whole INBOX (RFC 5256): the
    first run after the server starts (cold) and the best of three more (warm)."""
    c = Raw(port, ca)
    login(c)
    c.cmd("SELECT INBOX")
    out: dict[str, float] = {}
    for key, command in (("sort_date", "UID SORT (DATE) UTF-8 ALL"),
                         ("thread_refs", "UID THREAD REFERENCES UTF-8 ALL")):
        wall, _, cpu = timed(c, command, pid)
        out[f"{key}_cold"], out[f"{key}_cold_cpu"] = wall, cpu
        warm = min(timed(c, command, pid)[::2] for _ in range(3))
        out[f"{key}_warm"], out[f"{key}_warm_cpu"] = warm
    c.cmd("LOGOUT")
    c.close()
    return out


def idle_memory(pid: int, port: int, ca: Path, k: int) -> tuple[float, float]:
    """KiB per idle authenticated connection: (RSS, PSS)."""
    time.sleep(0.5)
    before = memory_kib(pid)
    conns = []
    deadline = time.monotonic() + 600
    for _ in range(k):
        c = Raw(port, ca)
        login(c)
        conns.append(c)
        if time.monotonic() > deadline:
            raise RuntimeError("logins took too long")
    time.sleep(1.0)
    after = memory_kib(pid)
    for c in conns:
        c.close()
    return (after[0] - before[0]) / k, (after[1] - before[1]) / k


KEYS = [  # key, label, unit, better
    ("envelope_cold", "envelope fetch, cold", "s", "lower"),
    ("envelope_cold_cpu", "envelope fetch, cold, server CPU", "s", "lower"),
    ("envelope_warm", "envelope fetch, warm", "s", "lower"),
    ("envelope_warm_cpu", "envelope fetch, warm, server CPU", "s", "lower"),
    ("bodies_500", "500 full bodies", "s", "lower"),
    ("bodies_500_cpu", "500 full bodies, server CPU", "s", "lower"),
    ("select_total_s", "connect+LOGIN+SELECT, all connections", "s", "lower"),
    ("select_login_s", "of which LOGIN commands", "s", "lower"),
    ("select_only_s", "of which SELECT commands", "s", "lower"),
    ("select_pss_kib", "PSS per connection with INBOX selected", "KiB", "lower"),
    ("select_rss_kib", "RSS per connection with INBOX selected", "KiB", "lower"),
    ("pull_s", "mbsync pull, wall", "s", "lower"),
    ("pull_cpu_s", "mbsync pull, server CPU", "s", "lower"),
    ("resync_s", "mbsync no-change re-sync, wall", "s", "lower"),
    ("resync_cpu_s", "mbsync no-change re-sync, server CPU", "s", "lower"),
    ("push_s", "mbsync push, wall", "s", "lower"),
    ("push_cpu_s", "mbsync push, server CPU", "s", "lower"),
    ("append_stock_msg_s", "APPEND stock imaplib", "msg/s", "higher"),
    ("append_stock_cpu_ms", "APPEND stock imaplib, server CPU per message", "ms", "lower"),
    ("append_pipe_msg_s", "APPEND pipelined", "msg/s", "higher"),
    ("append_pipe_cpu_ms", "APPEND pipelined, server CPU per message", "ms", "lower"),
    ("login_p50_ms", "mixed: LOGIN p50", "ms", "lower"),
    ("login_p99_ms", "mixed: LOGIN p99", "ms", "lower"),
    ("commands_per_s", "mixed: all commands", "/s", "higher"),
    ("cpu_ms_per_command", "mixed: server CPU per command", "ms", "lower"),
] + [(f"{c.lower()}_per_s", f"mixed: {c}", "/s", "higher") for c in wl.MIXED_COMMANDS] + [
    ("sort_date_cold", "UID SORT (DATE) UTF-8 ALL, cold", "s", "lower"),
    ("sort_date_cold_cpu", "UID SORT (DATE), cold, server CPU", "s", "lower"),
    ("sort_date_warm", "UID SORT (DATE) UTF-8 ALL, warm", "s", "lower"),
    ("sort_date_warm_cpu", "UID SORT (DATE), warm, server CPU", "s", "lower"),
    ("thread_refs_cold", "UID THREAD REFERENCES UTF-8 ALL, cold", "s", "lower"),
    ("thread_refs_cold_cpu", "UID THREAD REFERENCES, cold, server CPU", "s", "lower"),
    ("thread_refs_warm", "UID THREAD REFERENCES UTF-8 ALL, warm", "s", "lower"),
    ("thread_refs_warm_cpu", "UID THREAD REFERENCES, warm, server CPU", "s", "lower"),
    ("z_envelope", "COMPRESS=DEFLATE UID FETCH 1:* (FLAGS ENVELOPE UID)", "s", "lower"),
    ("z_envelope_cpu", "COMPRESS=DEFLATE envelope fetch, server CPU", "s", "lower"),
    ("z_bodies", "COMPRESS=DEFLATE UID FETCH 1:* (UID BODY.PEEK[])", "s", "lower"),
    ("z_bodies_cpu", "COMPRESS=DEFLATE full bodies, server CPU", "s", "lower"),
    ("z_bodies_ratio", "COMPRESS=DEFLATE full bodies, plain/compressed octets", "x", "higher"),
    ("rss", "RSS per idle connection", "KiB", "lower"),
    ("pss", "PSS per idle connection", "KiB", "lower"),
]
SECTIONS = ("fetch", "sort", "compress", "select", "mbsync", "append", "mixed", "idle")


def run_round(server: MxdServer | DovecotServer, proc: subprocess.Popen[bytes], rnd: int,
              args: argparse.Namespace, tls: dict[str, Path], msgs: list[bytes], base: Path,
              sections: set[str], last: bool) -> dict[str, float]:
    name, port, ca, pid = server.name, server.port, tls["ca"], proc.pid
    r: dict[str, float] = {}
    if "fetch" in sections:
        f = fetch_bench(port, ca, args.messages, pid)
        r.update(f)
        print(f"  {name}: UID FETCH 1:* (FLAGS ENVELOPE UID) cold {f['envelope_cold']:.3f}s "
              f"(server CPU {f['envelope_cold_cpu']:.2f}s), warm {f['envelope_warm']:.3f}s "
              f"(CPU {f['envelope_warm_cpu']:.2f}s) ({f['bytes'] / 1e6:.1f} MB); "
              f"FETCH 1:500 BODY.PEEK[] {f['bodies_500']:.3f}s (CPU {f['bodies_500_cpu']:.2f}s)")
    if "sort" in sections:
        f = sort_bench(port, ca, pid)
        r.update(f)
        print(f"  {name}: UID SORT (DATE) cold {f['sort_date_cold']:.3f}s warm "
              f"{f['sort_date_warm']:.3f}s (CPU {f['sort_date_warm_cpu']:.2f}s); UID THREAD "
              f"REFERENCES cold {f['thread_refs_cold']:.3f}s warm {f['thread_refs_warm']:.3f}s "
              f"(CPU {f['thread_refs_warm_cpu']:.2f}s)")
    if "compress" in sections:
        f = compress_bench(port, ca, pid)
        r.update(f)
        print(f"  {name}: COMPRESS=DEFLATE UID FETCH 1:* (FLAGS ENVELOPE UID) {f['z_envelope']:.3f}s "
              f"(CPU {f['z_envelope_cpu']:.2f}s); UID FETCH 1:* (UID BODY.PEEK[]) "
              f"{f['z_bodies']:.3f}s (CPU {f['z_bodies_cpu']:.2f}s, {f['z_bodies_ratio']:.1f}x smaller)")
    if "select" in sections and args.select_connections:
        f, socks = wl.select_idle(pid, port, ca, USER, PASSWORD, args.select_connections)
        for sk in socks:
            sk.close()
        r.update(f)
        print(f"  {name}: {args.select_connections} connections LOGIN+SELECT INBOX: "
              f"{f['select_total_s']:.2f}s (LOGIN {f['select_login_s']:.2f}s, SELECT "
              f"{f['select_only_s']:.2f}s); {f['select_pss_kib']:.0f} KiB PSS, "
              f"{f['select_rss_kib']:.0f} KiB RSS per connection")
    if "mbsync" in sections:
        f = wl.mbsync_runs(pid, port, ca, USER, PASSWORD, base / f"mbsync-{name}",
                           msgs[:args.push_messages], f"push{rnd}")
        r.update(f)
        print(f"  {name}: mbsync pull {int(f['pulled'])} msgs {f['pull_s']:.2f}s "
              f"(server CPU {f['pull_cpu_s']:.2f}s); re-sync {f['resync_s']:.2f}s "
              f"(CPU {f['resync_cpu_s']:.3f}s); push {args.push_messages} {f['push_s']:.2f}s "
              f"(CPU {f['push_cpu_s']:.2f}s)")
    if "append" in sections and args.append_messages:
        amsgs = [msgs[i % len(msgs)] for i in range(args.append_messages)]
        f = wl.append_imaplib(pid, port, ca, USER, PASSWORD, f"stock{rnd}", amsgs)
        r["append_stock_msg_s"], r["append_stock_cpu_ms"] = f["msg_s"], f["cpu_ms_msg"]
        f = wl.append_pipelined(pid, port, ca, USER, PASSWORD, f"pipe{rnd}", amsgs)
        r["append_pipe_msg_s"], r["append_pipe_cpu_ms"] = f["msg_s"], f["cpu_ms_msg"]
        print(f"  {name}: APPEND {len(amsgs)}: stock imaplib {r['append_stock_msg_s']:.0f} msg/s "
              f"(CPU {r['append_stock_cpu_ms']:.2f} ms/msg); pipelined "
              f"{r['append_pipe_msg_s']:.0f} msg/s (CPU {r['append_pipe_cpu_ms']:.2f} ms/msg)")
    if "mixed" in sections and args.mixed_seconds:
        box = "mixed"
        if rnd == 0:
            wl.fill_mailbox(port, ca, USER, PASSWORD, box, msgs[:200])
        f = wl.mixed_workload(pid, port, ca, USER, PASSWORD, box, msgs[:200],
                              args.mixed_clients, args.mixed_seconds)
        r.update(f)
        print(f"  {name}: mixed {args.mixed_clients} clients {args.mixed_seconds:.0f}s: "
              f"{f['commands_per_s']:.0f} commands/s, LOGIN p50 {f['login_p50_ms']:.1f} ms "
              f"p99 {f['login_p99_ms']:.1f} ms, CPU {f['cpu_ms_per_command']:.2f} ms/command, "
              + ", ".join(f"{c} {f[c.lower() + '_per_s']:.1f}/s" for c in wl.MIXED_COMMANDS)
              + (f" ({int(f['errors'])} client errors)" if f["errors"] else ""))
    if "idle" in sections and last and args.connections:
        r["rss"], r["pss"] = idle_memory(pid, port, ca, args.connections)
        print(f"  {name}: {args.connections} idle authenticated TLS connections: "
              f"{r['rss']:.1f} KiB RSS, {r['pss']:.1f} KiB PSS per connection")
    return r


def prepare(base: Path, n: int) -> tuple[dict[str, Path], Path, list[bytes]]:
    """Certificates (readable by Dovecot's users) and ``n`` generated messages, one file
    each under ``base``/messages, for the servers of a bench run."""
    tls = tls_files(base)
    for f in tls.values():
        os.chmod(f, 0o644)
    msgdir = base / "messages"
    msgdir.mkdir()
    msgs = make_messages(n)
    for i, m in enumerate(msgs):
        (msgdir / str(i)).write_bytes(m)
    print(f"{n} messages, {sum(map(len, msgs)) / 1e6:.1f} MB")
    return tls, msgdir, msgs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--connections", type=int, default=0,
                    help="idle authenticated connections for a memory figure (0: skip it)")
    ap.add_argument("--select-connections", type=int, default=200)
    ap.add_argument("--append-messages", type=int, default=10000)
    ap.add_argument("--push-messages", type=int, default=500)
    ap.add_argument("--mixed-clients", type=int, default=10)
    ap.add_argument("--mixed-seconds", type=float, default=60.0)
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated: " + ", ".join(SECTIONS))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="[server] workers of the mxd servers measured: \"mxd\" is 1, "
                         "\"mxd-wN\" is N (default: 1 2)")
    ap.add_argument("--baseline-root", type=Path,
                    help="also measure the mxd source tree in this directory, as mxd-base")
    ap.add_argument("--dovecot-performance-mode", action="store_true",
                    help="imap-login serves many clients per process (service_count = 0) "
                         "instead of Dovecot's default one process per connection")
    args = ap.parse_args()
    global DOVECOT_PERFORMANCE_MODE
    DOVECOT_PERFORMANCE_MODE = args.dovecot_performance_mode
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sections = set(args.sections.split(","))
    want = 4 * max(args.connections, args.select_connections) + 100
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, want)), hard))
    if shutil.which("dovecot") is None:
        sys.exit("dovecot is not installed (dovecot-imapd)")
    base = Path(tempfile.mkdtemp(prefix="mxd-bench-imap-"))
    os.chmod(base, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tls, msgdir, msgs = prepare(base, args.messages)
        servers: list[MxdServer | DovecotServer] = [
            MxdServer("mxd" if n == 1 else f"mxd-w{n}", ROOT, base, tls, msgdir, workers=n)
            for n in args.workers]
        if args.baseline_root is not None:
            servers.append(MxdServer("mxd-base", args.baseline_root.resolve(), base, tls, msgdir,
                                     workers=0))  # an older tree: its own default
        servers.append(DovecotServer(base, tls, msgdir))
        results: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}:")
            for server in servers:
                proc = server.start()
                procs.append(proc)
                results[server.name].append(run_round(server, proc, rnd, args, tls, msgs, base,
                                                      sections, rnd == args.rounds - 1))
                stop(proc)
        med = {name: {k: statistics.median(r[k] for r in rs if k in r)
                      for k, *_ in KEYS if any(k in r for r in rs)}
               for name, rs in results.items()}
        print(f"medians over {args.rounds} round(s) (machine shared with other work: "
              f"load average {os.getloadavg()[0]:.1f} at the end):")
        d = med["dovecot"]
        names = [s.name for s in servers]
        for k, label, unit, better in KEYS:
            if k not in d:
                continue
            row = ", ".join(f"{n} {med[n][k]:.3f}" for n in names if k in med[n])
            ratios = ", ".join(f"{n}/dovecot {med[n][k] / d[k]:.2f}x" for n in names
                               if n != "dovecot" and k in med[n] and d[k])
            print(f"  {label} ({unit}, {better} is better): {row}; {ratios}")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
