"""mxd's DNSSEC-aware resolver (dnspython for the wire format, Twisted sockets)."""
