"""Running one job of an admin command to completion on the reactor (the ``mxd`` CLI and
``mxd quickstart``): ``run_deferred`` and ``with_directory``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mxd.config import Config


def run_deferred(fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(reactor)`` (which may return a Deferred) to completion; return its result
    or raise its exception.  The reactor runs once per process, so a command calls this
    at most once."""
    from twisted.internet import defer, task

    box: dict[str, Any] = {}

    def main(reactor: Any) -> Any:
        d = defer.maybeDeferred(fn, reactor)
        d.addCallbacks(lambda r: box.__setitem__("result", r),
                       lambda f: box.__setitem__("failure", f))
        return d

    try:
        task.react(main)
    except SystemExit:
        pass
    if "failure" in box:
        box["failure"].raiseException()
    return box.get("result")


def with_directory(cfg: Config, fn: Callable[[Any], Any]) -> Any:
    from mxd import components

    async def run(reactor: Any) -> Any:
        store, directory = await components.open_store_and_directory(cfg, reactor)
        try:
            return await fn(directory)
        finally:
            await store.close()

    from twisted.internet import defer

    return run_deferred(lambda r: defer.ensureDeferred(run(r)))
