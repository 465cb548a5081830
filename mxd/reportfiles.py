"""Received reports (DMARC aggregate, TLS) kept as files: one JSON document per report,
written atomically (temporary file, fsync, rename) and named by period, reporter and a
hash of the report's identity, so a report that arrives twice is stored once.  Blocking
file I/O: the server calls it off the reactor thread."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ReportFiles:
    """One directory of JSON report documents."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, period: str, reporter: str, *identity: str) -> Path:
        """The file of the report of ``reporter`` for ``period`` with this identity."""
        key = "\0".join(identity).encode()
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", reporter)[:40] or "report"
        return self.directory / f"{period}-{safe}-{hashlib.sha256(key).hexdigest()[:16]}.json"

    def write(self, path: Path, data: dict[str, Any]) -> Path:
        """Write ``data`` to ``path`` durably: it is either all there or not at all."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def load(self, order: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
        """Every stored document that can be read, sorted by ``order``."""
        if not self.directory.is_dir():
            return []
        out = []
        for p in sorted(self.directory.glob("*.json")):
            try:
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        out.sort(key=order)
        return out
