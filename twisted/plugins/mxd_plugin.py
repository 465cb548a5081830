"""twistd plugin: ``twistd mxd --config PATH`` runs the mxd mail server.

The ServiceMaker is lazy: ``mxd.tap`` is imported only when twistd runs mxd, so
listing plugins stays cheap.  There is no ``twisted/__init__.py`` beside this
file on purpose (``twisted.plugins`` is a namespace shared with Twisted).
"""

from twisted.application.service import ServiceMaker

mxd = ServiceMaker(
    "mxd",
    "mxd.tap",
    "mxd mail server: SMTP, submission, IMAP, outbound queue with DANE/MTA-STS",
    "mxd",
)
