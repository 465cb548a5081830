"""Submission latency of `mxd-sendmail` against peers: msmtp (sendmail-compatible, GnuTLS,
SCRAM-SHA-256 without -PLUS) and swaks (AUTH PLAIN), each submitting one message per
invocation over STARTTLS to the same running `twistd mxd` submission port.

    .venv/bin/python bench/sendmail.py [-n 20] [--rounds 5]

Prints the median wall time per message of each client, and mxd-sendmail's ratio to each
peer, over several interleaved rounds (the clients take turns, so load from other work
on the machine falls on all of them alike).  What is measured is the whole command: process
start, TLS, SASL, one transaction, QUIT.  mxd-sendmail uses SCRAM-SHA-256-PLUS (the most
secure mechanism the server offers); msmtp cannot bind to the channel.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Keep bench/ off sys.path: a script named like a stdlib module would shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from tests.integration.mxdserver import VENV_BIN, MxdServer, make_server  # noqa: E402

MESSAGE = b"From: alice@example.test\nTo: bob@example.test\nSubject: bench\n\n" + b"x" * 2000


def _files(base: Path) -> dict[str, Path]:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": base / "ca.pem", "cert": base / "cert.pem", "key": base / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["cert"], "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    return paths


def clients(server: MxdServer, base: Path) -> dict[str, list[str]]:
    port = server.ports["submission"]
    pw = base / "password"
    pw.write_text(server.password + "\n")
    os.chmod(pw, 0o600)
    conf = base / "sendmail.toml"
    conf.write_text(f'host = "127.0.0.1"\nport = {port}\ntls_server_name = "localhost"\n'
                    f'ca_file = "{server.ca_file}"\nusername = "{server.user}"\n'
                    f'password_file = "{pw}"\nhostname = "bench.example.test"\n')
    out = {"mxd-sendmail": [str(VENV_BIN / "mxd-sendmail"), "--config", str(conf), "-i",
                            server.user2]}
    if shutil.which("msmtp"):
        rc = base / "msmtprc"
        rc.write_text(f"account bench\nhost 127.0.0.1\nport {port}\ntls on\ntls_starttls on\n"
                      f"tls_trust_file {server.ca_file}\ntls_host_override localhost\n"
                      f"auth scram-sha-256\nuser {server.user}\npassword {server.password}\n"
                      f"from {server.user}\ndomain bench.example.test\n"
                      "account default : bench\n")
        os.chmod(rc, 0o600)
        out["msmtp"] = ["msmtp", "-C", str(rc), server.user2]
    if shutil.which("swaks"):
        out["swaks"] = ["swaks", "--silent", "2", "--server", "127.0.0.1", "--port", str(port),
                        "--tls", "--tls-verify", "--tls-ca-path", str(server.ca_file),
                        "--tls-sni", "localhost", "--auth", "PLAIN", "--auth-user", server.user,
                        "--auth-password", server.password, "--from", server.user,
                        "--to", server.user2, "--data", "-", "--helo", "bench.example.test"]
    return out


def run_one(argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, input=MESSAGE, capture_output=True, timeout=60)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr.decode()[-300:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="messages per client per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mxd-bench-sendmail-"))
    try:
        server = make_server(base, _files(base))
        server.start()
        try:
            cmds = clients(server, base)
            per: dict[str, list[float]] = {name: [] for name in cmds}
            for rnd in range(args.rounds):
                order = list(cmds)
                order = order[rnd % len(order):] + order[:rnd % len(order)]
                for name in order:
                    times = [run_one(cmds[name]) for _ in range(args.n)]
                    per[name].append(statistics.median(times))
            print(f"submission per invocation, median of {args.rounds} interleaved rounds of "
                  f"{args.n} (ms; the machine is shared with other work):")
            med = {name: statistics.median(v) * 1000 for name, v in per.items()}
            for name, ms in med.items():
                print(f"  {name:<13} {ms:7.1f} ms   rounds: "
                      + " ".join(f"{x * 1000:.0f}" for x in per[name]))
            for name, ms in med.items():
                if name != "mxd-sendmail":
                    print(f"  mxd-sendmail / {name}: {med['mxd-sendmail'] / ms:.2f}x the time")
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
