"""HTML mail made safe to show: an allow-list sanitiser on nh3 (the Rust Ammonia
sanitiser, which parses with html5ever as a browser does) plus the rules of a mail
reader that Ammonia leaves to its caller.  Pure apart from calling nh3.

What comes through: text formatting, tables, lists, links (http, https, mailto; opened
in a new browsing context with ``rel="noopener noreferrer"``) and images from ``data:``
(raster types only) or the message itself (``cid:``, RFC 2392, turned into ``data:``
URLs by the caller's ``inline`` callback).  Dropped, content and all: script, style
elements, svg, math, iframe/object/embed, templates, title; dropped as tags: forms and
their controls, ``base``, ``meta`` (no refresh), ``link``.  Every event handler and any
attribute not on the list goes; URLs are absolute and in an allowed scheme, never
``javascript:``.  ``style`` attributes keep only layout and colour properties, and a
value that could fetch or hide anything (``url(``, ``image-set(``, ``@import``,
``expression(``, CSS escapes) drops the whole attribute — no CSS exfiltration.

Remote images (http/https) are replaced by nothing unless ``remote`` is set (the user
clicked "load remote content"); ``Sanitised.blocked`` counts them so the page can say so.
The result is served into a sandboxed iframe under its own CSP (``mxd.webmail.message``),
which blocks script and remote fetches again should anything slip through here.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs
import nh3

TAGS = frozenset({
    "a", "abbr", "address", "article", "b", "bdi", "bdo", "big", "blockquote", "br",
    "caption", "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn",
    "div", "dl", "dt", "em", "figcaption", "figure", "font", "footer", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "i", "img", "ins", "kbd", "li", "main", "mark", "ol",
    "p", "pre", "q", "rp", "rt", "ruby", "s", "samp", "section", "small", "span", "strike",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead",
    "time", "tr", "tt", "u", "ul", "var", "wbr",
})
# Removed with everything inside them.
CLEAN_CONTENT = frozenset({
    "script", "style", "svg", "math", "iframe", "frame", "frameset", "object", "embed",
    "applet", "template", "title", "noembed", "noframes", "textarea", "select", "option",
    "button", "canvas", "audio", "video", "portal", "xmp", "noscript",
})
_COMMON = {"style", "title", "dir", "lang", "align", "valign", "width", "height",
           "bgcolor", "color"}
ATTRIBUTES: dict[str, set[str]] = {
    "*": _COMMON,
    "a": {"href", "name"},
    "img": {"src", "alt", "border", "hspace", "vspace"},
    "td": {"colspan", "rowspan", "nowrap"},
    "th": {"colspan", "rowspan", "nowrap", "scope"},
    "table": {"border", "cellpadding", "cellspacing", "summary"},
    "col": {"span"}, "colgroup": {"span"},
    "font": {"face", "size"},
    "ol": {"start", "type", "reversed"}, "ul": {"type"}, "li": {"value"},
    "blockquote": {"cite"}, "q": {"cite"}, "del": {"datetime"}, "ins": {"datetime"},
    "time": {"datetime"}, "details": {"open"},
}
STYLE_PROPERTIES = frozenset({
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "line-height", "letter-spacing", "word-spacing",
    "text-align", "text-decoration", "text-indent", "text-transform", "vertical-align",
    "white-space", "word-break", "word-wrap", "overflow-wrap", "direction",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-collapse", "border-spacing",
    "border-radius", "width", "height", "max-width", "min-width", "max-height",
    "min-height", "display", "table-layout", "list-style-type", "float", "clear",
})
# Anything in a style value that could load a resource or smuggle one past a filter.
_STYLE_DANGER = re.compile(r"url\s*\(|image(-set)?\s*\(|@import|expression\s*\(|\\|"
                           r"behavior|-moz-binding|javascript:|var\s*\(|attr\s*\(",
                           re.IGNORECASE)
_DATA_IMAGE = re.compile(r"data:image/(png|gif|jpeg|jpg|webp);base64,[A-Za-z0-9+/=\s]*\Z",
                         re.IGNORECASE)
_REMOTE = re.compile(r"https?://", re.IGNORECASE)
MAX_HTML = 4 * 1024 * 1024  # characters sanitised; the rest is cut


@attrs.frozen
class Sanitised:
    html: str
    blocked: int  # remote images left out (0 when remote content was allowed)


def sanitise(html: str, *, remote: bool = False,
             inline: Callable[[str], str | None] = lambda cid: None) -> Sanitised:
    """``html`` with only what the module docstring allows.  ``inline(cid)`` gives the
    ``data:`` URL of the message's own image with that Content-ID, or None."""
    blocked = 0

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        nonlocal blocked
        if attr == "style":
            return None if _STYLE_DANGER.search(value) else value
        if tag == "img" and attr == "src":
            v = value.strip()
            if v[:4].lower() == "cid:":
                return inline(v[4:].strip().strip("<>"))
            if _DATA_IMAGE.match(v):
                return v
            if _REMOTE.match(v):
                if remote:
                    return v
                blocked += 1
            return None
        if attr in ("href", "cite"):
            v = value.strip()
            return v if re.match(r"(https?:|mailto:)", v, re.IGNORECASE) else None
        return value

    cleaned = nh3.clean(
        html[:MAX_HTML], tags=set(TAGS), clean_content_tags=set(CLEAN_CONTENT),
        attributes={k: set(v) for k, v in ATTRIBUTES.items()},
        attribute_filter=attribute_filter, strip_comments=True,
        link_rel="noopener noreferrer", url_schemes={"http", "https", "mailto", "data", "cid"},
        filter_style_properties=set(STYLE_PROPERTIES), url_relative="deny",
        set_tag_attribute_values={"a": {"target": "_blank"}})
    return Sanitised(cleaned, blocked)


FRAME_STYLE = ("body{font:14px/1.45 system-ui,sans-serif;color:#1d232a;margin:8px;"
               "overflow-wrap:break-word}img{max-width:100%;height:auto}")


def frame_document(fragment: str) -> str:
    """The sanitised fragment as the document of the message frame."""
    return (f"<!doctype html><html><head><meta charset=utf-8><style>{FRAME_STYLE}</style>"
            f"</head><body>{fragment}</body></html>")


def frame_csp(remote: bool) -> bytes:
    """The message frame's Content-Security-Policy: no script, no plugins, no forms,
    styles inline only, images from data: (and http/https when remote content was
    allowed), and the CSP sandbox too, in case the frame is opened on its own."""
    img = "data: https: http:" if remote else "data:"
    return (f"default-src 'none'; img-src {img}; style-src 'unsafe-inline'; "
            "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; "
            "sandbox allow-popups allow-popups-to-escape-sandbox").encode()
