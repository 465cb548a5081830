"""mxd: a secure-by-default mail server on Twisted."""

__version__ = "0.1.0.dev0"
