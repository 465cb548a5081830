"""SASL (RFC 4422) mechanisms for mxd's servers and clients, with channel binding."""
