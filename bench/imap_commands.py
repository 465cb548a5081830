"""The runner behind bench/imap_search.py and bench/imap_preview.py: a list of IMAP commands
timed against mxd and Dovecot 2.3 on loopback with the same INBOX (the messages, servers
and raw client of ``bench/imap.py``).  Each command is timed the first time after the
server starts (cold) and as the best of three more runs (warm), with the server's CPU
time; ``--rounds N`` interleaves the servers N times (each round restarts both) and the
medians and mxd/Dovecot ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.imap import (  # noqa: E402
    DovecotServer,
    MxdServer,
    Raw,
    login,
    prepare,
    stop,
    timed,
)

# (key, command, whether Dovecot runs it too) for an INBOX of n messages.
Commands = Callable[[int], list[tuple[str, str, bool]]]


def run(server: MxdServer | DovecotServer, proc: subprocess.Popen[bytes], ca: Path,
        n: int, commands: Commands) -> dict[str, float]:
    c = Raw(server.port, ca)
    login(c)
    c.cmd("SELECT INBOX")
    out: dict[str, float] = {}
    for key, command, both in commands(n):
        if not both and server.name == "dovecot":
            continue
        wall, _, cpu = timed(c, command, proc.pid)
        out[f"{key}_cold"], out[f"{key}_cold_cpu"] = wall, cpu
        warm = min(timed(c, command, proc.pid)[::2] for _ in range(3))
        out[f"{key}_warm"], out[f"{key}_warm_cpu"] = warm
    c.cmd("LOGOUT")
    c.close()
    return out


def main(commands: Commands, name: str) -> None:
    """Parse --messages/--rounds, run ``commands`` against mxd and Dovecot, print medians."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-root", type=Path,
                    help="also measure the mxd source tree in this directory, as mxd-base "
                         "(before/after figures of a change in one run)")
    args = ap.parse_args()
    if shutil.which("dovecot") is None:
        sys.exit("dovecot is not installed (dovecot-imapd)")
    base = Path(tempfile.mkdtemp(prefix=f"mxd-bench-{name}-"))
    os.chmod(base, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tls, msgdir, _ = prepare(base, args.messages)
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
                r = run(server, proc, tls["ca"], args.messages, commands)
                results[server.name].append(r)
                stop(proc)
                print(f"  {server.name}: " + ", ".join(
                    f"{k} {r[k + '_cold']:.3f}/{r[k + '_warm']:.3f}s"
                    for k, _, _ in commands(args.messages) if k + "_cold" in r))
        print(f"medians over {args.rounds} round(s), cold/warm wall seconds and warm server "
              f"CPU (machine shared with other work: load average {os.getloadavg()[0]:.1f} "
              f"at the end):")
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for name, rs in results.items()}
        m, d = med["mxd"], med["dovecot"]
        for key, command, both in commands(args.messages):
            row = (f"  {command}: mxd {m[key + '_cold']:.3f}/{m[key + '_warm']:.3f}s "
                   f"(CPU {m[key + '_warm_cpu']:.3f}s)")
            if both:
                row += (f"; dovecot {d[key + '_cold']:.3f}/{d[key + '_warm']:.3f}s "
                        f"(CPU {d[key + '_warm_cpu']:.3f}s); mxd/dovecot cold "
                        f"{m[key + '_cold'] / d[key + '_cold']:.2f}x warm "
                        f"{m[key + '_warm'] / d[key + '_warm']:.2f}x")
            print(row)
            if "mxd-base" in med:
                b = med["mxd-base"]
                print(f"    mxd-base {b[key + '_cold']:.3f}/{b[key + '_warm']:.3f}s "
                      f"(CPU {b[key + '_warm_cpu']:.3f}s); mxd/mxd-base warm "
                      f"{m[key + '_warm'] / b[key + '_warm']:.2f}x")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(base, ignore_errors=True)
