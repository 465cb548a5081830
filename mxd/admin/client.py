"""The CLI's way into a running server: a POST to its admin listener with the local token
(a file of mode 0600 that only the mxd user can read), over HTTP on loopback and HTTPS to this
machine's own address otherwise."""

from __future__ import annotations

import ipaddress
import ssl
import urllib.error
import urllib.request
from typing import Any


class AdminUnreachable(Exception):
    """No admin listener, no readable token, or no answer: the message says which."""


def local_admin_post(cfg: Any, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """POST to ``path`` on the first admin listener of ``cfg``; (status, body).  An HTTP
    error status is returned, not raised; ``AdminUnreachable`` when nothing answered."""
    from mxd.admin.auth import local_token
    from mxd.components import admin_token_file

    for li in cfg.listeners:
        if li.protocol != "admin":
            continue
        token = local_token(admin_token_file(cfg))
        if token is None:
            raise AdminUnreachable("cannot read the admin token (run as the mxd user)")
        ip = ipaddress.ip_address(li.address)
        if ip.is_unspecified:
            ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        headers = {"Authorization": f"Bearer {token}"}
        context = None
        scheme = "http"
        if not li.address or not ipaddress.ip_address(li.address).is_loopback:
            # HTTPS to this machine's own address: the certificate names the host name.
            scheme, headers["Host"] = "https", cfg.hostname
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(f"{scheme}://{host}:{li.port}{path}", data=b"",
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()
        except (OSError, urllib.error.URLError) as e:
            raise AdminUnreachable(f"the server did not answer on its admin listener ({e})"
                                   ) from e
    raise AdminUnreachable("no admin listener is configured")
