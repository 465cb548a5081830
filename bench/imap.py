"""IMAP benchmark: mxd against Dovecot 2.3 on loopback with the same messages.

Measures, for a mailbox of N messages (default 10,000):
  * ``UID FETCH 1:* (FLAGS ENVELOPE UID)`` (first run "cold", second "warm");
  * a full-body fetch of 500 messages (``FETCH 1:500 BODY.PEEK[]``);
  * memory of K idle authenticated TLS connections (default 1,000): the growth of the
    servers' resident memory (RSS, and PSS, which counts shared pages once) divided by K.

mxd runs as the composed server, ``twistd mxd`` with a generated config (an IMAPS
listener; the account made by ``mxd account add --password-stdin``, the messages
delivered through the store API).  Dovecot runs from a one-file config in a temp dir
(mail in Maildir, mail processes as ``nobody``; its default high-security login mode,
one imap-login process per TLS connection, or ``--dovecot-performance-mode``).  Both
serve implicit TLS on 127.0.0.1.

``--rounds N`` repeats the fetch figures N times, the servers interleaved in each round;
every round restarts each server, and Dovecot's index files are removed first, so each
"cold" figure is a first fetch with nothing derived from the messages cached (the
operating system's page cache is warm for both).  Idle memory is measured once, in the
last round.  ``--baseline-root DIR`` also measures an mxd source tree from DIR (e.g. an
older commit from ``git archive``) as "mxd-base".  Prints medians and mxd/Dovecot
ratios.  Stops by itself: every wait is bounded and the servers are killed at the end.

    .venv/bin/python bench/imap.py [--messages 10000] [--connections 1000] [--rounds 3]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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

async def main(reactor):
    data, msgdir, user, pw = sys.argv[1:5]
    store = SQLiteStore(Path(data), reactor)
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

    def __init__(self, name: str, root: Path, base: Path, tls: dict[str, Path], msgdir: Path) -> None:
        self.name = name
        self.root = root
        self.dir = base / name
        self.dir.mkdir()
        self.port = free_port()
        self.config = self.dir / "mxd.toml"
        self.config.write_text(MXD_CONFIG.format(data=self.dir / "data", cert=tls["cert"],
                                                 key=tls["key"], port=self.port))
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
        self.cmd = [str(bindir / "twistd"), "-n", "--pidfile=", f"--logfile={self.dir / 'mxd.log'}",
                    "mxd", "--config", str(self.config)]

    def start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.cmd, cwd=self.root, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=open(self.dir / "mxd.err", "ab"))
        wait_listening(proc, self.port, 60, self.dir / "mxd.log")
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


# -- memory ------------------------------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(children.get(q, []))
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over the process tree, in KiB."""
    rss = pss = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


# -- measurements --------------------------------------------------------------------------------------

def timed(c: Raw, command: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    data = c.cmd(command)
    return time.perf_counter() - t0, len(data)


def fetch_bench(port: int, ca: Path, count: int) -> dict[str, float]:
    c = Raw(port, ca)
    login(c)
    c.cmd("SELECT INBOX")
    cold, n1 = timed(c, "UID FETCH 1:* (FLAGS ENVELOPE UID)")
    warm = min(timed(c, "UID FETCH 1:* (FLAGS ENVELOPE UID)")[0] for _ in range(3))
    n = min(500, count)
    bodies = min(timed(c, f"FETCH 1:{n} BODY.PEEK[]")[0] for _ in range(3))
    c.cmd("LOGOUT")
    c.close()
    return {"envelope_cold": cold, "envelope_warm": warm, "bodies_500": bodies, "bytes": n1}


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--connections", type=int, default=1000,
                    help="idle connections for the memory figure (0: skip it)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--baseline-root", type=Path,
                    help="also measure the mxd source tree in this directory, as mxd-base")
    ap.add_argument("--dovecot-performance-mode", action="store_true",
                    help="imap-login serves many clients per process (service_count = 0) "
                         "instead of Dovecot's default one process per connection")
    args = ap.parse_args()
    global DOVECOT_PERFORMANCE_MODE
    DOVECOT_PERFORMANCE_MODE = args.dovecot_performance_mode
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.connections + 100)), hard))
    if shutil.which("dovecot") is None:
        sys.exit("dovecot is not installed (dovecot-imapd)")
    base = Path(tempfile.mkdtemp(prefix="mxd-bench-imap-"))
    os.chmod(base, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tls = tls_files(base)
        for f in tls.values():
            os.chmod(f, 0o644)
        msgdir = base / "messages"
        msgdir.mkdir()
        msgs = make_messages(args.messages)
        for i, m in enumerate(msgs):
            (msgdir / str(i)).write_bytes(m)
        print(f"{args.messages} messages, {sum(map(len, msgs)) / 1e6:.1f} MB")
        servers: list[MxdServer | DovecotServer] = [MxdServer("mxd", ROOT, base, tls, msgdir)]
        if args.baseline_root is not None:
            servers.append(MxdServer("mxd-base", args.baseline_root.resolve(), base, tls, msgdir))
        servers.append(DovecotServer(base, tls, msgdir))
        results: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}:")
            for server in servers:
                proc = server.start()
                procs.append(proc)
                r = fetch_bench(server.port, tls["ca"], args.messages)
                print(f"  {server.name}: UID FETCH 1:* (FLAGS ENVELOPE UID) cold "
                      f"{r['envelope_cold']:.3f}s, warm {r['envelope_warm']:.3f}s "
                      f"({r['bytes'] / 1e6:.1f} MB); FETCH 1:500 BODY.PEEK[] {r['bodies_500']:.3f}s")
                if rnd == args.rounds - 1 and args.connections:
                    r["rss"], r["pss"] = idle_memory(proc.pid, server.port, tls["ca"], args.connections)
                    print(f"  {server.name}: {args.connections} idle authenticated TLS connections: "
                          f"{r['rss']:.1f} KiB RSS, {r['pss']:.1f} KiB PSS per connection")
                results[server.name].append(r)
                stop(proc)
        keys = [("envelope_cold", "envelope fetch, cold", "s"),
                ("envelope_warm", "envelope fetch, warm", "s"),
                ("bodies_500", "500 full bodies", "s"),
                ("rss", "RSS per idle connection", "KiB"),
                ("pss", "PSS per idle connection", "KiB")]
        med = {name: {k: statistics.median(r[k] for r in rs if k in r)
                      for k, _, _ in keys if any(k in r for r in rs)}
               for name, rs in results.items()}
        print(f"medians over {args.rounds} round(s):")
        for name, fig in med.items():
            print(f"  {name}: " + ", ".join(f"{label} {fig[k]:.3f}{unit}"
                                           for k, label, unit in keys if k in fig))
        d = med["dovecot"]
        for name in [s.name for s in servers if s.name != "dovecot"]:
            print(f"ratios {name}/dovecot (lower is better for mxd):")
            for k, label, _ in keys:
                if k in med[name] and k in d:
                    print(f"  {label}: {med[name][k] / d[k]:.3f}x")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
