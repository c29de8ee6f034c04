"""The exception root of the NAT lab."""

from services.errors import ServiceError


class NatLabError(ServiceError):
    """Root of every error the NAT lab raises on purpose."""


class NeedsRoot(NatLabError, PermissionError):
    """The lab needs root (network namespaces, nftables) and we are not root."""


class LabBusy(NatLabError, RuntimeError):
    """Another lab is running on this machine; the namespace names are global."""


class CommandFailed(NatLabError, RuntimeError):
    """A command that builds or inspects the lab (ip, nft, sysctl) failed."""


class UnknownSite(NatLabError, KeyError):
    """A site name that the lab does not have."""

    def __str__(self) -> str:
        # KeyError quotes its argument; show the message as written.
        return str(self.args[0]) if self.args else ""


class NatMismatch(NatLabError, AssertionError):
    """A NAT's probed mapping or filtering differs from what its name promises."""
