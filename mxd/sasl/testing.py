"""Test doubles for code that uses the SASL layer (the SMTP and IMAP servers' tests).

``InMemorySecrets`` is a ``lookup_secrets`` callable over a dict; ``sasl_server_for_tests``
builds a ``SASLServer`` on it with cheap key derivation, so that SCRAM and PLAIN cost
milliseconds in unit tests.  Real clients that insist on the SCRAM minimum (gsasl,
scramp, aiosasl refuse fewer than 4096 iterations) need ``iterations=4096``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from mxd.metrics import IMetrics
from mxd.sasl.credentials import AccountSecrets, StoredSecrets
from mxd.sasl.ratelimit import AuthLimiter, AuthLimiterSettings
from mxd.sasl.server import SASLServer, SASLSettings

CHEAP_ITERATIONS = 64
CHEAP_SCRYPT_N = 2**10


class InMemorySecrets:
    """A ``lookup_secrets`` callable: ``secrets(name)`` fires with StoredSecrets or None."""

    def __init__(self, *, iterations: int = CHEAP_ITERATIONS, scrypt_n: int = CHEAP_SCRYPT_N) -> None:
        self.accounts: dict[str, StoredSecrets] = {}
        self.lookups: list[str] = []
        self.broken: Exception | None = None  # set to make lookups errback
        self._iterations = iterations
        self._scrypt_n = scrypt_n

    def add(self, name: str, password: str, *, cram_md5: bool = True) -> StoredSecrets:
        secrets = StoredSecrets.derive(password, iterations=self._iterations, cram_md5=cram_md5,
                                       scrypt_n=self._scrypt_n)
        self.accounts[name] = secrets
        return secrets

    def __call__(self, name: str) -> Deferred[AccountSecrets | None]:
        self.lookups.append(name)
        if self.broken is not None:
            return fail(self.broken)
        return succeed(self.accounts.get(name))


def sasl_server_for_tests(
    secrets: InMemorySecrets, clock: IReactorTime, *, hostname: str = "mx.example.test",
    settings: SASLSettings | None = None, limiter_settings: AuthLimiterSettings | None = None,
    metrics: IMetrics | None = None,
) -> SASLServer:
    """A SASLServer over ``secrets`` whose unknown-user paths cost as little as its accounts."""
    st = settings or SASLSettings(fake_salt_key=b"mxd-test-fake-salt-key-000000000",
                                  fake_scram_iterations=secrets._iterations,
                                  fake_scrypt_n=secrets._scrypt_n)
    return SASLServer(secrets, st, AuthLimiter(clock, limiter_settings, metrics), clock, hostname,
                      metrics=metrics)
