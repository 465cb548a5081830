"""The account web client (webmail)."""
