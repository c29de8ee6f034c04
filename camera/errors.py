"""The exception root of the camera package."""


class PeercamError(Exception):
    """Root of every error peercam raises on purpose."""


class BadConfig(PeercamError, ValueError):
    """The configuration (file, flag or environment) is unusable."""


class SourceError(PeercamError, RuntimeError):
    """The camera source failed to start or stopped delivering frames."""


class NoCamera(PeercamError, LookupError):
    """No camera here: no device key in the state directory, or no agent running."""
