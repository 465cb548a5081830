"""Real SMTP sinks for the queue's integration tests and bench: aiosmtpd and Postfix smtp-sink."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.integration.tools import STARTUP_TIMEOUT, free_port, require_module, require_tool

MESSAGE_ID_RE = re.compile(rb"^Message-I[dD]:\s*(<[^>\r\n]+>)", re.M)


class AiosmtpdSink:
    """aiosmtpd on 127.0.0.1 with STARTTLS (a trustme certificate).

    Recipients starting with ``bounce@`` get 550 5.1.1, ``defer@`` 451 4.3.0.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        require_module("aiosmtpd")
        from aiosmtpd.controller import Controller

        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = free_port()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        sink = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                                  rcpt_options: list[str]) -> str:
                if address.startswith("bounce@"):
                    return "550 5.1.1 no such user here"
                if address.startswith("defer@"):
                    return "451 4.3.0 try again later"
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with sink.lock:
                    sink.messages.append({
                        "mail_from": envelope.mail_from, "rcpts": list(envelope.rcpt_tos),
                        "data": envelope.original_content or envelope.content,
                        "tls": session.ssl is not None, "mail_options": list(envelope.mail_options),
                    })
                return "250 2.0.0 OK queued"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     tls_context=ctx, require_starttls=False,
                                     server_hostname="mx.remote.test")

    def __enter__(self) -> AiosmtpdSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


class SmtpSink:
    """Postfix smtp-sink on 127.0.0.1 dumping each transaction to a file in ``dump_dir``."""

    def __init__(self, tmp: Path, delay: float | None = None, backlog: int = 256) -> None:
        self.exe = require_tool("smtp-sink")
        # smtp-sink drops privileges to "nobody", who cannot enter pytest's 0700 tmp dirs.
        self.dump_dir = Path(tempfile.mkdtemp(prefix="mxd-sink-"))
        os.chmod(self.dump_dir, 0o777)
        self.port = free_port()
        self.argv = [self.exe, "-u", "nobody", "-d", str(self.dump_dir) + "/%H%M%S.",
                     "-m", "1000"]
        if delay:
            self.argv += ["-w", str(delay)]
        self.argv += [f"127.0.0.1:{self.port}", str(backlog)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SmtpSink:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        import socket

        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("smtp-sink did not start") from None
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dump_dir, ignore_errors=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def files(self) -> list[Path]:
        return [p for p in self.dump_dir.iterdir() if p.is_file()]

    def count(self) -> int:
        return len(self.files())

    def message_ids(self) -> list[bytes]:
        out = []
        for p in self.files():
            m = MESSAGE_ID_RE.search(p.read_bytes())
            if m:
                out.append(m.group(1))
        return out
