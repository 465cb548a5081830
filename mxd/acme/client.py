"""One ACME order (RFC 8555 §7.4) with the ``acme`` library, for a name and a host key.

Everything here blocks (HTTP requests, polling, RSA signatures): the service runs it in a
worker thread, never on the reactor thread.  Challenge answers are installed through the
``Provisioner`` callbacks, which the service routes back to the reactor thread.

The certificate signing request is made for the *pre-generated host key*, never for a new
key: the TLSA records published for that key stay valid across renewals (RFC 7671 §8.1).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mxd.acme.tlsalpn import TLSALPN01
from mxd.errors import MxdError
from mxd.hostkeys import HostKey, write_private

USER_AGENT = "mxd-acme"


class ACMEError(MxdError):
    """An order failed; the message says what the CA said and what to check."""


class Provisioner(Protocol):
    """Installs and removes challenge answers (called from the worker thread)."""

    def add_http01(self, token: str, key_authorization: str) -> None: ...
    def remove_http01(self, token: str) -> None: ...
    def add_tlsalpn01(self, name: str, key_authorization: str) -> None: ...
    def remove_tlsalpn01(self, name: str) -> None: ...


@attrs.frozen
class ACMESettings:
    directory_url: str
    state_dir: Path  # account key and account.json
    contact: str = ""
    ca_file: Path | None = None
    challenges: tuple[str, ...] = ("tls-alpn-01", "http-01")
    timeout: float = 90.0  # seconds for one order's validation and finalisation


def _account_key(state_dir: Path) -> jose.JWKEC:
    path = state_dir / "account-key.pem"
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return jose.JWKEC(key=loaded)


def _explain(e: Exception) -> str:
    if isinstance(e, messages.Error):
        what = e.typ.rsplit(":", 1)[-1] if e.typ else "error"
        hint = {"rateLimited": "the CA's rate limit: wait, mxd retries with back-off",
                "unauthorized": "the CA could not validate: check that the name resolves to "
                "this server and ports 443/80 reach mxd",
                "connection": "the CA could not connect: check firewall and port forwarding",
                "dns": "the CA could not resolve the name: check its A/AAAA records",
                "caa": "a CAA record forbids this CA: see `mxd dns records`"}.get(what, "")
        return f"{what}: {e.detail or e}" + (f" ({hint})" if hint else "")
    if isinstance(e, errors.ValidationError):
        details = []
        for authzr in e.failed_authzrs:
            for ch in authzr.body.challenges:
                if ch.error is not None:
                    details.append(f"{authzr.body.identifier.value}: {_explain(ch.error)}")
        return "validation failed: " + ("; ".join(details) or str(e))
    if isinstance(e, errors.TimeoutError):
        return "the CA did not finish validation in time"
    if isinstance(e, OSError):  # requests' ConnectionError, SSLError, timeouts
        return f"{e.__class__.__name__}: {e} (is the CA reachable?)"
    return f"{e.__class__.__name__}: {e}"


class ACMEClient:
    """A registered ACME account at one CA (blocking; use from one worker thread)."""

    def __init__(self, settings: ACMESettings) -> None:
        self.settings = settings
        self._client: client.ClientV2 | None = None
        self.account_uri: str | None = None

    def _connect(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        s = self.settings
        key = _account_key(s.state_dir)
        verify: Any = str(s.ca_file) if s.ca_file else True
        net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=verify,
                                   user_agent=USER_AGENT)
        directory = client.ClientV2.get_directory(s.directory_url, net)
        acme = client.ClientV2(directory, net)
        state = s.state_dir / "account.json"
        known = None
        try:
            data = json.loads(state.read_text())
            if data.get("directory") == s.directory_url:
                known = data.get("uri")
        except (OSError, ValueError):
            pass
        if known:
            net.account = messages.RegistrationResource(uri=known, body=messages.Registration())
            self.account_uri = known
        else:
            # RFC 8555 §7.3: creating with a known key returns the existing account.
            reg = messages.NewRegistration.from_data(
                email=s.contact or None, terms_of_service_agreed=True)
            try:
                regr = acme.new_account(reg)
            except errors.ConflictError as e:
                regr = messages.RegistrationResource(uri=e.location, body=messages.Registration())
                net.account = regr
            self.account_uri = regr.uri
            tmp = state.with_name(state.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"uri": regr.uri, "directory": s.directory_url}, f)
            os.replace(tmp, state)
        self._client = acme
        return acme

    def order(self, name: str, host_key: HostKey, provisioner: Provisioner,
              now: Callable[[], datetime.datetime] | None = None) -> bytes:
        """Obtain a certificate for ``name`` on ``host_key``; return the PEM full chain.

        Raises ACMEError with the CA's problem and a hint."""
        try:
            return self._order(name, host_key, provisioner, now)
        except ACMEError:
            raise
        except (messages.Error, errors.Error, OSError, ValueError) as e:
            self._client = None  # reconnect next time (new directory, new nonce)
            raise ACMEError(f"certificate for {name} ({host_key.kind.value}): {_explain(e)}"
                            ) from e
        except Exception as e:
            self._client = None
            raise ACMEError(f"certificate for {name} ({host_key.kind.value}): "
                            f"{e.__class__.__name__}: {e} (is the CA reachable?)") from e

    def _order(self, name: str, host_key: HostKey, provisioner: Provisioner,
               now: Callable[[], datetime.datetime] | None) -> bytes:
        acme = self._connect()
        csr = crypto_util.make_csr(host_key.pem(), [name])
        order = acme.new_order(csr)
        cleanup: list[Callable[[], None]] = []
        try:
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue
                challb = self._pick(authzr.body.challenges)
                if challb is None:
                    offered = ", ".join(c.chall.typ for c in authzr.body.challenges)
                    raise ACMEError(f"the CA offers none of {', '.join(self.settings.challenges)}"
                                    f" for {name} (offered: {offered})")
                cleanup.append(self._provision(name, challb, provisioner))
                acme.answer_challenge(challb, challb.chall.response(acme.net.key))
            deadline = (now or (lambda: datetime.datetime.now()))() + datetime.timedelta(
                seconds=self.settings.timeout)
            done = acme.poll_and_finalize(order, deadline=deadline)
        finally:
            for undo in cleanup:
                undo()
        if not done.fullchain_pem:
            raise ACMEError(f"the CA returned no certificate for {name}")
        return done.fullchain_pem.encode("ascii")

    def _pick(self, offered: Sequence[messages.ChallengeBody]) -> messages.ChallengeBody | None:
        for typ in self.settings.challenges:
            for c in offered:
                if c.chall.typ == typ:
                    return c
        return None

    def _provision(self, name: str, challb: messages.ChallengeBody,
                   p: Provisioner) -> Callable[[], None]:
        assert self._client is not None
        key: Any = self._client.net.key
        chall = challb.chall
        if isinstance(chall, challenges.HTTP01):
            token = chall.encode("token")
            p.add_http01(token, chall.validation(key))
            return lambda: p.remove_http01(token)
        if isinstance(chall, TLSALPN01):
            p.add_tlsalpn01(name, chall.key_authorization(key))
            return lambda: p.remove_tlsalpn01(name)
        raise ACMEError(f"unsupported challenge {chall.typ}")
