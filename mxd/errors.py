"""The root of mxd's exception tree; each module derives its own errors from it."""


class MxdError(Exception):
    """Base class of every error mxd raises on purpose."""
