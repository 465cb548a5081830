"""Message previews for IMAP FETCH PREVIEW (RFC 8970), computed when a message is stored.

RFC 8970 leaves the algorithm to the server; its preview text format (§4) is plain text
useful as a contextual preview, without markup, of no more than 256 characters.  mxd
takes the first text part that is not an attachment (text/plain before text/html inside
a multipart/alternative), decodes its transfer encoding and charset, strips HTML (tags,
comments, script and style content, entities), collapses white space and keeps the first
``MAX_CHARS`` (200) characters.  A message without such a part has the empty preview
(the empty string, RFC 8970 §3.1, when there is no text to preview).

The store computes it with every new body (a deriver registered by ``register``, run on
the store's thread within the storing transaction) from the first ``HEAD`` octets; bodies
stored before get theirs from the store's background backfill, and FETCH computes a
missing one itself (or answers NIL under PREVIEW (LAZY), RFC 8970 §3.2).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from mxd.imap import message as mimemsg
from mxd.store.interfaces import IMailStore, ReadHead

KIND = "imap.preview.1"
DERIVER = "imap.preview"
MAX_CHARS = 200
HEAD = 64 * 1024  # octets of the message read to find the text
_MAX_TEXT = 16 * 1024  # octets of one part's body decoded (a preview needs far fewer)
# The C0 controls and DEL, dropped from a preview by str.translate.
_CONTROLS = dict.fromkeys([*range(0x20), 0x7F])


class _Text(HTMLParser):
    """The text content of an HTML fragment, without script/style and comments (a
    <title> stays, as Dovecot 2.3 keeps it: the differential test compares them)."""

    _SKIP = frozenset({"script", "style"})
    _BREAKS = frozenset({"br", "p", "div", "li", "tr", "td", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.size = 0
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BREAKS:
            self.out.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and self.size < 4 * MAX_CHARS:
            self.out.append(data)
            self.size += len(data)


def strip_html(text: str) -> str:
    p = _Text()
    try:
        p.feed(text)
        p.close()
    except Exception:  # noqa: BLE001 - malformed HTML: fall back to dropping tags
        return html.unescape(re.sub(r"<[^>]*>", " ", text))
    return "".join(p.out)


def _is_attachment(e: mimemsg.Entity) -> bool:
    disp = str(e.headers.get("Content-Disposition", "")).strip().lower()
    return disp.startswith("attachment")


def _first_text(e: mimemsg.Entity) -> mimemsg.Entity | None:
    if e.is_multipart:
        children = e.children
        if e.subtype == "alternative":
            plain = [c for c in children if c.maintype == "text" and c.subtype == "plain"]
            children = plain + [c for c in children if c not in plain]
        for c in children:
            found = _first_text(c)
            if found is not None:
                return found
        return None
    if e.maintype == "text" and e.subtype in ("plain", "html") and not _is_attachment(e):
        return e
    return None


def preview_text(raw: bytes) -> str:
    """The preview of a message given its first octets (pure; never raises for bad
    input: undecodable parts give what can be decoded)."""
    msg = mimemsg.ParsedMessage.parse(raw)
    part = _first_text(msg.root)
    if part is None:
        return ""
    body = raw[part.body_start:min(part.end, part.body_start + _MAX_TEXT)]
    cte = str(part.headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    try:
        body = mimemsg.decode_cte(body, cte)
    except mimemsg.UnknownCTE:
        return ""
    charset = part.param("charset")
    try:
        text = body.decode(charset or "us-ascii", "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    if part.subtype == "html":
        text = strip_html(text)
    text = _collapse(text.replace("\0", " "))
    # No control characters in the result (it goes out as an IMAP string).
    text = text[:MAX_CHARS * 2].translate(_CONTROLS)
    return text[:MAX_CHARS].rstrip()


def _collapse(text: str) -> str:
    """White space runs as one space, stripped: only as much of ``text`` as the preview
    can use (collapsing a whole 16 KiB part cost more than everything else here, at
    every delivery), more only when white space ate most of it."""
    window = 8 * MAX_CHARS
    while True:
        # str.split() splits at runs of exactly the characters re's \s matches in a
        # str pattern (str.isspace), and drops them at both ends, four times faster.
        out = " ".join(text[:window].split())
        if len(out) >= 2 * MAX_CHARS or window >= len(text):
            return out
        window *= 4


def derive(read_head: ReadHead) -> dict[str, bytes]:
    """The store's deriver: ``{KIND: preview as UTF-8}``."""
    return {KIND: preview_text(read_head(HEAD)).encode("utf-8")}


def register(store: IMailStore) -> None:
    """Have ``store`` compute the preview of every message it stores from now on."""
    store.register_deriver(DERIVER, (KIND,), derive)
