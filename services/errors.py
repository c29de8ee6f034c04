"""The exception root of the services package.

Every error a ``services`` module raises on purpose derives from
:class:`ServiceError` and, where one fits, from the matching builtin too, so
callers can catch either and the command line turns any of them into one line.
"""


class ServiceError(Exception):
    """Root of every error the services package raises on purpose."""
