"""The last warnings and errors logged, for the admin overview: a bounded log observer."""

from __future__ import annotations

import collections
import time
from typing import Any

from twisted.logger import LogLevel, formatEvent


class RecentProblems:
    """A twisted.logger observer keeping the last ``size`` events at ``level`` or above
    as (time, namespace, level name, text)."""

    def __init__(self, size: int = 25, level: LogLevel = LogLevel.warn) -> None:
        self.level = level
        self.events: collections.deque[tuple[float, str, str, str]] = collections.deque(
            maxlen=size)

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if not isinstance(level, type(LogLevel.warn)) or level < self.level:
            return
        text = formatEvent(event)  # never raises: a broken format is reported in the text
        failure = event.get("log_failure")
        if failure is not None:
            text += f": {failure.getErrorMessage()}"
        self.events.append((float(event.get("log_time") or time.time()),
                            str(event.get("log_namespace", "")), level.name, text[:500]))

    def latest(self) -> list[tuple[float, str, str, str]]:
        return list(reversed(self.events))
