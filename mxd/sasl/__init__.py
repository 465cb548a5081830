"""SASL (RFC 4422) mechanisms for mxd's servers and clients, with channel binding.

Modules: ``api`` (the contract), ``credentials`` (stored secrets), ``saslprep``
(RFC 4013), ``scram`` (RFC 5802/7677 cores), ``cram_md5`` (RFC 2195), ``plain``
(RFC 4616), ``login`` (draft-murchison-sasl-login), ``channelbinding`` (RFC 5929/9266),
``ratelimit`` (failure back-off), ``server`` (``SASLServer``), ``client``
(``choose_mechanism``/``make_client``), ``testing`` (in-memory secrets for tests).

How a protocol server uses it (SMTP AUTH, IMAP AUTHENTICATE):

1. After the TLS handshake (``IHandshakeListener.handshakeCompleted``), compute
   ``channel_bindings_from_transport(self.transport)`` once and keep it in the
   connection's ``ConnectionInfo(remote_ip, tls=True, loopback, channel_bindings,
   service)``; before TLS use ``tls=False, channel_bindings=None``.
2. Advertise ``server.advertised(conn)`` (empty before TLS unless loopback is allowed;
   IMAP: LOGINDISABLED when ``server.plaintext_allowed(conn)`` is False).
3. ``exchange = server.start(name, conn)`` (``UnknownMechanism`` for anything not
   offered), then ``exchange.step(data)``: ``None`` when the client sent no initial
   response, ``b""`` for ``=``, else the base64-decoded line.  Handle ``*`` yourself
   (abort: SMTP 501, IMAP BAD) and drop the exchange.
4. Outcomes: ``Continue(challenge)`` → ``334 b64`` / ``+ b64``.
   ``Success(authcid, additional)``: when ``additional`` is set (SCRAM's ``v=``) and
   the protocol has no success data (SMTP, IMAP4rev1), send it as one more challenge,
   wait for the client's empty line, then 235 / OK.  ``Failure``: ``temporary`` or
   ``rate_limited`` → SMTP ``454 4.7.0``, IMAP ``NO [UNAVAILABLE]``; otherwise
   ``535 5.7.8`` / ``NO [AUTHENTICATIONFAILED]`` with ``reason``.  ``additional``
   (``e=...``) may be sent as a last challenge before the failure, or dropped.
"""
