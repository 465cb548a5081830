"""Structured logging: twisted.logger events written as logfmt (default) or JSON lines.

Events keep their named fields; the observer renders the format string for a ``msg``
field and adds every other public field.  Fields whose names suggest secrets are never
written (defence in depth: modules must not log them in the first place).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from zope.interface import implementer

LEVELS = {
    "trace": LogLevel.debug,  # twisted has no trace level; trace events are debug + trace=True
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

# Fields this process adds to every line (a worker process: ``worker=N``).
PROCESS_FIELDS: dict[str, Any] = {}

_SECRET_WORDS = ("password", "passwd", "secret", "proof", "payload", "credential", "token")


def _is_secret(name: str) -> bool:
    n = name.lower()
    return any(w in n for w in _SECRET_WORDS)


def _public_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in event.items():
        if k.startswith("log_") or k in ("format", "message", "isError", "system", "time",
                                          "why", "failure", "printed"):
            continue
        if _is_secret(k):
            out[k] = "<redacted>"
            continue
        out[k] = v
    return out


def _logfmt_value(v: Any) -> str:
    s = v if isinstance(v, str) else repr(v) if not isinstance(v, int | float | bool) else str(v)
    if s == "" or any(c in s for c in ' ="\\\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def render_event(event: Mapping[str, Any], fmt: str = "logfmt") -> str:
    """One line for one event (without the trailing newline)."""
    level = event.get("log_level", LogLevel.info)
    ts = event.get("log_time", time.time())
    msg = formatEvent(dict(event)) if event.get("log_format") is not None else ""
    fields = _public_fields(event)
    failure = event.get("log_failure")
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
        "level": level.name,
        "ns": event.get("log_namespace", "-"),
        **PROCESS_FIELDS,
        "msg": msg,
    }
    record.update((k, v) for k, v in fields.items() if k not in record)
    if failure is not None:
        record["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
    if fmt == "json":
        return json.dumps(record, default=str, ensure_ascii=False)
    return " ".join(f"{k}={_logfmt_value(v)}" for k, v in record.items())


@implementer(ILogObserver)
class LineObserver:
    """Writes each event as one logfmt or JSON line to a stream."""

    def __init__(self, stream: IO[str], fmt: str = "logfmt") -> None:
        self._stream = stream
        self._fmt = fmt

    def __call__(self, event: Mapping[str, Any]) -> None:
        try:
            self._stream.write(render_event(event, self._fmt) + "\n")
            self._stream.flush()
        except Exception:  # noqa: BLE001, S110 - a logging failure must not break the server
            pass
        if event.get("log_failure") is not None and self._fmt != "json":
            tb = event["log_failure"].getTraceback()
            try:
                self._stream.write(tb)
                self._stream.flush()
            except Exception:  # noqa: BLE001, S110
                pass


def make_observer(level: str = "info", fmt: str = "logfmt",
                  levels: Mapping[str, str] | None = None,
                  stream: IO[str] | None = None) -> ILogObserver:
    """An observer that writes lines, filtered by a default and per-namespace levels."""
    observer = cast(ILogObserver, LineObserver(stream or sys.stdout, fmt))
    return cast(ILogObserver, FilteringLogObserver(observer, [_predicate(level, levels)]))


def _predicate(level: str, levels: Mapping[str, str] | None) -> Any:
    """A filter by a default level and per-namespace levels."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    for ns, lvl in (levels or {}).items():
        predicate.setLogLevelForNamespace(ns, LEVELS[lvl])
    return predicate


@implementer(ILogObserver)
class ConfigurableObserver:
    """Lines filtered by levels that can change after start: twistd sets logging up
    (``--logger``) before mxd has read its config, and ``configure`` then applies the
    config's ``[log]`` section."""

    def __init__(self, level: str = "info", fmt: str = "logfmt",
                 levels: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._inner: Any = make_observer(level, fmt, levels, self._stream)

    def configure(self, level: str, fmt: str, levels: Mapping[str, str] | None = None) -> None:
        self._inner = make_observer(level, fmt, levels, self._stream)

    def __call__(self, event: Mapping[str, Any]) -> None:
        self._inner(event)


_twistd_observers: list[ConfigurableObserver] = []
_twistd_config: tuple[str, str, dict[str, str]] | None = None  # the [log] section, once read


def twistd_observer() -> ILogObserver:
    """For ``twistd --logger mxd.log.twistd_observer``: the config's ``[log]`` section
    (twistd makes the service, which reads the config and calls ``configure_twistd``,
    before it starts logging; should that order change, logfmt at info until then).
    ``MXD_LOG_LEVEL``/``MXD_LOG_FORMAT``, when set, override the section."""
    level, fmt, levels = _twistd_config or ("info", "logfmt", {})
    obs = ConfigurableObserver(*with_env(level, fmt), levels)
    _twistd_observers.append(obs)
    return cast(ILogObserver, obs)


def configure_twistd(level: str, fmt: str, levels: Mapping[str, str] | None = None) -> None:
    """Apply the config's ``[log]`` section to the observers ``twistd_observer`` makes."""
    global _twistd_config
    _twistd_config = (level, fmt, dict(levels or {}))
    for obs in _twistd_observers:
        obs.configure(*with_env(level, fmt), levels)


def twistd_default_observer(level: str, levels: Mapping[str, str] | None = None,
                            stream: IO[str] | None = None) -> ILogObserver:
    """twistd's own text lines, filtered by the ``[log]`` levels: for ``twistd -n mxd``
    without ``--logger``, whose default observer writes every event, debug included
    (about 0.4 ms of CPU per SMTP message in debug lines nobody asked for).
    ``MXD_LOG_LEVEL``, when set, overrides ``level``."""
    from twisted.logger import textFileLogObserver

    level = os.environ.get("MXD_LOG_LEVEL") or level
    return cast(ILogObserver, FilteringLogObserver(textFileLogObserver(stream or sys.stdout),
                                                   [_predicate(level, levels)]))


def with_env(level: str, fmt: str) -> tuple[str, str]:
    """The level and format to use: ``MXD_LOG_LEVEL``/``MXD_LOG_FORMAT`` override the
    config's."""
    return os.environ.get("MXD_LOG_LEVEL") or level, os.environ.get("MXD_LOG_FORMAT") or fmt
