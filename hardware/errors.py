"""The exception root of the hardware package, with each error also inheriting the matching builtin.

Every error a ``hardware`` module raises on purpose derives from
:class:`HardwareError` and, where one fits, from the matching builtin too
(``BadTiming(HardwareError, ValueError)``), so callers can catch either.
"""


class HardwareError(Exception):
    """Root of every error the hardware package raises on purpose."""
