"""SMTP (RFC 5321): the ESMTP server, address syntax, replies; the client lives in ``client``."""
