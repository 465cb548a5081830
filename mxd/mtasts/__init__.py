"""SMTP MTA Strict Transport Security (MTA-STS), RFC 8461.

* ``policy``: parsing of the policy file and the ``_mta-sts`` TXT record, MX matching (pure);
* ``webpki``: WebPKI validation of an MX host's chain for its name (RFC 8461 §4.2, pure);
* ``cache``: the persistent policy cache (RFC 8461 §5.1);
* ``fetch``: the HTTPS fetcher (RFC 8461 §3.3), a thin Twisted adapter;
* ``resolve``: the per-domain lookup (TXT, cache, fetch) and the per-MX decision;
* ``refresh``: the background refresher service (RFC 8461 §5.1).
"""
