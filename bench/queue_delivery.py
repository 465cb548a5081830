"""Outbound queue throughput: mxd's QueueRunner against Postfix relaying the same load.

Both deliver N (default 2,000) queued 10 KiB messages over STARTTLS to one sink: aiosmtpd
with a trustme certificate, running in its own process (Postfix's smtp-sink has no TLS).
The clock runs from the start of delivery until the sink holds every message:

* mxd: the messages are queued first (store + queue tables, not timed), then the
  QueueRunner starts (direct transport, MX from a FakeResolver pointing at 127.0.0.1).
* Postfix: a throwaway instance from a temp config dir on loopback (relayhost = the sink,
  ``smtp_tls_security_level = may``); messages are injected with smtp-source while
  ``defer_transports = smtp`` holds them (not timed), then the hold is lifted
  (reload + ``postqueue -f``) and timed.

Usage: ``.venv/bin/python bench/queue_delivery.py [-n 2000] [--size 10240] [--concurrency 20]``.
Needs root for Postfix (master runs as root and drops to the postfix user); without it, or
without Postfix, only mxd is measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path and "queue.py" would
# shadow the standard library's queue module (which Twisted's thread pool imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

SINK = r'''
import asyncio, ssl, sys, os
from aiosmtpd.controller import Controller
port, cert, key, countfile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
fd = os.open(countfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
class H:
    async def handle_DATA(self, server, session, envelope):
        os.write(fd, b"T" if session.ssl is not None else b"P")
        return "250 2.0.0 OK"
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(H(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=False)
c.start()
print("READY", flush=True)
sys.stdin.read()
c.stop()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(n: int, size: int) -> bytes:
    head = (f"From: bench@example.org\r\nTo: r{n}@remote.test\r\nSubject: bench {n}\r\n"
            f"Message-ID: <{n}@bench.test>\r\n\r\n").encode()
    line = b"0123456789" * 7 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


class Sink:
    def __init__(self, tmp: Path) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.cert, self.key = tmp / "cert.pem", tmp / "key.pem"
        cert.private_key_pem.write_to_path(str(self.key))
        with open(self.cert, "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
        self.port = free_port()
        self.countfile = tmp / "sink.count"
        self.countfile.write_bytes(b"")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SINK, str(self.port), str(self.cert), str(self.key),
             str(self.countfile)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise RuntimeError("sink did not start")

    def counts(self) -> tuple[int, int]:
        data = self.countfile.read_bytes()
        return len(data), data.count(b"T")

    def reset(self) -> None:
        self.countfile.write_bytes(b"")

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(sink: Sink, n: int, timeout: float) -> float:
    start = time.monotonic()
    while sink.counts()[0] < n:
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"only {sink.counts()[0]} of {n} messages arrived in {timeout}s")
        time.sleep(0.02)
    return time.monotonic()


# -- mxd --------------------------------------------------------------------------------


def run_mxd(tmp: Path, sink: Sink, n: int, size: int, concurrency: int) -> tuple[float, int]:
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred, gatherResults

    from mxd.dns.testing import FakeResolver
    from mxd.queue.queue import Queue
    from mxd.queue.runner import QueueRunner, QueueSettings
    from mxd.store.interfaces import OutboundMessage, OutboundRecipient
    from mxd.store.queuedb import QUEUE_MIGRATIONS
    from mxd.store.sqlite import SQLiteStore
    from mxd.store.sqlitequeue import SQLiteQueueStore

    data_dir = tmp / "mxd"
    data_dir.mkdir()
    result: dict[str, Any] = {}

    async def main() -> None:
        store = SQLiteStore(data_dir, reactor)
        store.register_schema("queue", QUEUE_MIGRATIONS)
        await store.open()
        queue = Queue(SQLiteQueueStore(store), reactor)
        for start in range(0, n, 100):
            ds = []
            for i in range(start, min(n, start + 100)):
                w = store.new_blob()
                w.write(message(i, size))
                ds.append(queue.enqueue(w, OutboundMessage(
                    "bench@example.org", (OutboundRecipient(f"r{i}@remote.test"),))))
            await gatherResults(ds)
        resolver = FakeResolver()
        resolver.add("remote.test", "MX", ["10 mx.remote.test."])
        resolver.add("mx.remote.test", "A", ["127.0.0.1"])
        runner = QueueRunner(queue, resolver, reactor,
                             QueueSettings(port=sink.port, max_concurrent=concurrency,
                                           max_per_domain=concurrency),
                             hostname="mx.example.org")
        t0 = time.monotonic()
        runner.startService()
        while sink.counts()[0] < n:
            from twisted.internet.task import deferLater

            await deferLater(reactor, 0.02, lambda: None)
            if time.monotonic() - t0 > 600:
                raise RuntimeError("mxd did not finish in 600 s")
        result["elapsed"] = time.monotonic() - t0
        await runner.stopService()
        await store.close()

    def done(r: Any) -> None:
        if hasattr(r, "printTraceback"):
            r.printTraceback()
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: ensureDeferred(main()).addBoth(done))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return result["elapsed"], sink.counts()[1]


# -- Postfix ----------------------------------------------------------------------------

MAIN_CF = """compatibility_level = 3.6
queue_directory = {q}
data_directory = {d}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.bench.test
mydomain = bench.test
myorigin = bench.test
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = remote.test
relayhost = [127.0.0.1]:{sink}
smtp_tls_security_level = may
smtp_tls_loglevel = 0
smtpd_tls_security_level = none
default_destination_concurrency_limit = {conc}
initial_destination_concurrency = {conc}
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
biff = no
maillog_file_prefixes = /tmp, /var
maillog_file = {tmp}/postfix.log
defer_transports = {defer}
"""


def postfix_available() -> str | None:
    if os.geteuid() != 0:
        return "not root (Postfix's master must start as root)"
    for tool in ("postfix", "smtp-source", "postqueue"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed"
    return None


def run_postfix(tmp: Path, sink: Sink, n: int, size: int, concurrency: int) -> tuple[float, int]:
    conf = tmp / "postfix"
    conf.mkdir()
    qdir, ddir = tmp / "pfqueue", tmp / "pfdata"
    inport = free_port()
    os.chmod(tmp, 0o755)
    qdir.mkdir()
    ddir.mkdir()
    shutil.chown(ddir, "postfix")

    def write_main(defer: str) -> None:
        (conf / "main.cf").write_text(MAIN_CF.format(q=qdir, d=ddir, sink=sink.port,
                                                     conc=concurrency, tmp=tmp, defer=defer))

    write_main("smtp, relay")  # relayhost mail goes through the "relay" transport
    master = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line.startswith("smtp ") and len(fields) > 1 and fields[1] == "inet":
            line = f"127.0.0.1:{inport} inet n - n - - smtpd"
        elif fields and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            fields[4] = "n"  # no chroot: the queue lives in a temp dir
            line = " ".join(fields)
        master.append(line)
    (conf / "master.cf").write_text("\n".join(master) + "\n")
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    started = subprocess.run(["/usr/sbin/postfix", "-c", str(conf), "start"], env=env,
                             capture_output=True, text=True)
    if started.returncode != 0:
        log = tmp / "postfix.log"
        raise RuntimeError("postfix start failed: " + started.stderr.strip()
                           + (log.read_text()[-500:] if log.exists() else ""))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", inport), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Postfix smtpd did not start") from None
                time.sleep(0.1)
        subprocess.run(["/usr/sbin/smtp-source", "-s", "20", "-m", str(n), "-l", str(size),
                        "-f", "bench@example.org", "-t", "r@remote.test", "-M", "bench.test",
                        f"127.0.0.1:{inport}"], check=True, capture_output=True)
        # wait until every message sits deferred (not timed)
        deadline = time.monotonic() + 300
        while True:
            out = subprocess.run(["/usr/sbin/postqueue", "-c", str(conf), "-j"],
                                 capture_output=True, text=True, env=env).stdout
            deferred = out.count('"queue_name": "deferred"')
            if deferred >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix deferred only {deferred} of {n}")
            time.sleep(0.2)
        sink.reset()
        write_main("")
        subprocess.run(["/usr/sbin/postfix", "-c", str(conf), "reload"], env=env, check=True,
                       capture_output=True)
        t0 = time.monotonic()
        subprocess.run(["/usr/sbin/postqueue", "-c", str(conf), "-f"], env=env, check=True,
                       capture_output=True)
        t1 = wait_for(sink, n, 600)
        return t1 - t0, sink.counts()[1]
    finally:
        subprocess.run(["/usr/sbin/postfix", "-c", str(conf), "stop"], env=env,
                       capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--no-postfix", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mxd-bench-queue-"))
    sink = Sink(tmp)
    try:
        results: dict[str, tuple[float, int]] = {}
        why_not = "skipped (--no-postfix)" if args.no_postfix else postfix_available()
        if why_not is None:
            sink.reset()
            try:
                results["postfix"] = run_postfix(tmp, sink, args.n, args.size, args.concurrency)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                why_not = f"failed: {e}"
        sink.reset()
        results["mxd"] = run_mxd(tmp, sink, args.n, args.size, args.concurrency)
        print(f"queue bench: {args.n} messages of {args.size} bytes over STARTTLS to aiosmtpd, "
              f"concurrency {args.concurrency}")
        for name, (elapsed, tls) in results.items():
            print(f"  {name:8s} {elapsed:7.2f} s  {args.n / elapsed:8.1f} msg/s  "
                  f"({tls} of {args.n} over TLS)")
        if "postfix" in results:
            ratio = (args.n / results["mxd"][0]) / (args.n / results["postfix"][0])
            print(f"  ratio mxd/postfix: {ratio:.2f}")
        else:
            print(f"  postfix: not measured: {why_not}")
        return 0
    finally:
        sink.stop()
        if os.environ.get("KEEP_BENCH_DIR"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
