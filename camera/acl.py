"""The viewer ACL and the pairing secrets, both kept on the camera, never on a server.

Files in the state directory, each written atomically with mode 0600:

- ``viewers.json``: the paired viewers (public key, name, when added).
- ``pairing/<id>.json``: open pairing windows made by ``peercam pair`` (the
  secret, its expiry, whether it may be used more than once).

Files rather than a socket so that ``peercam pair`` and ``peercam viewers``
work over SSH whether or not the agent runs; the agent re-reads them when they
change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from camera.errors import BadConfig, PeercamError
from services.files import write_private
from services.signatures import check_pairing_proof, unb64url

logger = logging.getLogger(__name__)

ACL_FILE = "viewers.json"
PAIRING_DIR = "pairing"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def fingerprint(viewer_key: str) -> str:
    """A short, readable handle for a viewer key (for `peercam viewers`)."""
    digest = int.from_bytes(hashlib.sha256(unb64url(viewer_key)).digest()[:8], "big")
    chars = [_CROCKFORD[(digest >> (5 * i)) & 31] for i in range(10)]
    text = "".join(reversed(chars))
    return f"{text[:5]}-{text[5:]}"


class AmbiguousHandle(PeercamError, LookupError):
    """A name given to revoke matches more than one viewer: nothing was revoked."""


@dataclass(frozen=True)
class Viewer:
    """One paired viewer."""

    key: str
    """Its P-256 public key, base64url SPKI."""
    name: str
    """What it called itself when pairing."""
    added: float
    """When it was paired (Unix time)."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


class ViewerACL:
    """``viewers.json``: who may watch. Reloaded when the file changes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / ACL_FILE
        self._viewers: dict[str, Viewer] = {}
        self._stamp: tuple[int, int] | None = None
        self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Re-read the file if it changed; True if it did."""
        stamp = self._file_stamp()
        if stamp == self._stamp and self._stamp is not None:
            return False
        viewers: dict[str, Viewer] = {}
        if stamp is not None:
            try:
                data = json.loads(self.path.read_text())
                for entry in data.get("viewers", []):
                    viewer = Viewer(str(entry["key"]), str(entry["name"]), float(entry["added"]))
                    viewers[viewer.key] = viewer
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BadConfig(f"{self.path}: unreadable viewer list ({exc})") from None
        changed = viewers != self._viewers or self._stamp is None
        self._viewers, self._stamp = viewers, stamp
        return changed

    def __contains__(self, key: str) -> bool:
        return key in self._viewers

    def get(self, key: str) -> Viewer | None:
        return self._viewers.get(key)

    def viewers(self) -> list[Viewer]:
        return sorted(self._viewers.values(), key=lambda v: v.added)

    def add(self, key: str, name: str) -> Viewer:
        """Add (or rename) a viewer; returns the stored entry."""
        self.reload()
        existing = self._viewers.get(key)
        viewer = Viewer(key, name, existing.added if existing else time.time())
        self._save({**self._viewers, key: viewer})
        return viewer

    def revoke(self, handle: str) -> list[Viewer]:
        """Remove the viewer whose fingerprint, key or name is ``handle``; returns it.

        A fingerprint or key names one viewer. A name shared by several viewers
        ("Chrome on Linux") is refused with :class:`AmbiguousHandle` listing their
        fingerprints, and nothing is revoked.
        """
        self.reload()
        exact = handle.upper().replace("-", "")
        gone = [v for v in self._viewers.values()
                if handle in (v.fingerprint, v.key) or exact == v.fingerprint.replace("-", "")]
        if not gone:
            gone = [v for v in self._viewers.values() if v.name == handle]
            if len(gone) > 1:
                listing = ", ".join(v.fingerprint for v in gone)
                raise AmbiguousHandle(
                    f"{len(gone)} viewers are named {handle[:80]!r}: revoke one by its "
                    f"fingerprint ({listing})"
                )
        if gone:
            self._save({k: v for k, v in self._viewers.items() if v not in gone})
        return gone

    def clear(self) -> int:
        self.reload()
        count = len(self._viewers)
        self._save({})
        return count

    def _save(self, viewers: dict[str, Viewer]) -> None:
        """Write ``viewers`` to the file, then hold them. A write that fails (a full
        or read-only card) raises OSError and leaves both the file and the list in
        memory as they were: the camera never trusts a key its file does not list."""
        data = {"viewers": [asdict(v) for v in sorted(viewers.values(), key=lambda v: v.added)]}
        write_private(self.path, (json.dumps(data, indent=1) + "\n").encode())
        self._viewers = viewers
        self._stamp = self._file_stamp()


@dataclass(frozen=True)
class PairingWindow:
    """An open pairing window: one secret, until it expires or is used."""

    secret: str
    expires: float
    reusable: bool = False


def new_secret() -> str:
    """130 random bits as 26 Crockford base32 characters: not guessable online."""
    value = secrets.randbits(130)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(26))


class PairingWindows:
    """Secrets from ``peercam pair`` (files) and from the demo (in memory)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / PAIRING_DIR
        self._memory: list[PairingWindow] = []
        self._spent: set[str] = set()
        """Single-use secrets of files used here (in case a file could not be removed)."""

    def open(self, ttl: float = 600.0, *, reusable: bool = False,
             persist: bool = True) -> PairingWindow:
        """Open a window; ``persist`` writes it for a separately running agent."""
        window = PairingWindow(new_secret(), time.time() + ttl, reusable)
        if persist:
            name = hashlib.sha256(window.secret.encode()).hexdigest()[:16]
            write_private(self.dir / f"{name}.json", json.dumps(asdict(window)).encode())
        else:
            self._memory.append(window)
        return window

    def _files(self) -> list[tuple[Path, PairingWindow]]:
        out: list[tuple[Path, PairingWindow]] = []
        if not self.dir.is_dir():
            return out
        now = time.time()
        for path in sorted(self.dir.glob("*.json")):
            try:
                window = PairingWindow(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("ignoring unreadable pairing file %s (%s)", path, exc)
                continue
            if window.expires <= now:
                with contextlib.suppress(OSError):  # a read-only card: left, still expired
                    path.unlink(missing_ok=True)  # expired: tidy up
                continue
            if window.secret in self._spent:
                continue  # used here, its file could not be removed
            out.append((path, window))
        return out

    def use(self, message: bytes, proof: str) -> bool:
        """True if ``proof`` was made with an open secret; a single-use one is consumed."""
        match = self.match(message, proof)
        if match is not None:
            self.consume(match)
        return match is not None

    def match(self, message: bytes, proof: str) -> tuple[PairingWindow, Path | None] | None:
        """The open window whose secret made ``proof`` (and its file, if it has one),
        without using it up: :meth:`consume` does, once the pairing is stored."""
        now = time.time()
        self._memory = [w for w in self._memory if w.expires > now]
        for window in self._memory:
            if check_pairing_proof(window.secret, message, proof):
                return window, None
        for path, window in self._files():
            if check_pairing_proof(window.secret, message, proof):
                return window, path
        return None

    def consume(self, match: tuple[PairingWindow, Path | None]) -> None:
        """Close a single-use window (a reusable one stays open)."""
        window, path = match
        if window.reusable:
            return
        if path is None:
            if window in self._memory:
                self._memory.remove(window)
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            # The secret must not work twice: this process remembers it as spent.
            logger.error("cannot remove the used pairing file %s (%s); it stays spent "
                         "until the camera restarts", path, exc)
        self._spent.add(window.secret)

    def is_open(self, *, include_reusable: bool = True) -> bool:
        """Is a window open (in memory or from ``peercam pair``)?

        ``include_reusable=False`` leaves out the demo's long reusable window, so
        the LED does not show "pairing" for as long as a demo runs.
        """
        now = time.time()
        windows = [w for w in self._memory if w.expires > now]
        windows += [w for _path, w in self._files()]
        return any(include_reusable or not w.reusable for w in windows)

    def close_all(self) -> None:
        self._memory.clear()
        for path, _window in self._files():
            path.unlink(missing_ok=True)
