"""IMAP4rev1/IMAP4rev2 server (RFC 3501, RFC 9051) for mxd."""
