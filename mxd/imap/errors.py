"""Errors of the IMAP package (one tree, rooted at MxdError)."""

from __future__ import annotations

from mxd.errors import MxdError


class IMAPError(MxdError):
    """Base of IMAP errors."""


class ParseError(IMAPError):
    """A command line does not follow the RFC 3501 §9 / RFC 9051 §9 grammar.

    ``tag`` is the command's tag when it could be read (so the reply can be tagged BAD).
    """

    def __init__(self, message: str, tag: str | None = None) -> None:
        super().__init__(message)
        self.tag = tag


class FramingError(IMAPError):
    """The input cannot be split into commands (line or literal over a limit)."""

    def __init__(self, message: str, fatal: bool = False, tag: str | None = None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.tag = tag
        self.append = False  # an APPEND body over APPENDLIMIT (NO, not BAD)


class BadSequence(IMAPError, ValueError):
    """A sequence set names messages that do not exist (or ``$`` with nothing saved)."""
