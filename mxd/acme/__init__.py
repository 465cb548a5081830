"""ACME (RFC 8555) certificates for the pre-generated host keys.

* ``tlsalpn``: the TLS-ALPN-01 challenge (RFC 8737) for the ``acme`` library (pure);
* ``schedule``: when to renew (2/3 of the lifetime) and the retry back-off (pure);
* ``client``: one blocking order with the ``acme`` library, run in a worker thread;
* ``service``: the Twisted service that keeps every certificate current.

The protocol itself (JWS, nonces, account and order objects) is the ``acme`` and ``josepy``
libraries' (Certbot's, maintained by the EFF): mxd writes no JWS by hand.
"""
