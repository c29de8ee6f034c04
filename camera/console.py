"""A small line-based console on a serial port, for a camera with no network.

Someone with a USB-serial adapter (or the Pi's UART) and ``screen /dev/ttyUSB0
115200`` can ask the camera for its state, device ID, NAT type and a pairing link.

Three layers, each testable alone:

* :class:`ConsoleProtocol` is the line discipline, sans-I/O: bytes in, command lines
  out, echo and responses as bytes to send. It edits (backspace/DEL, Ctrl-U, Ctrl-C),
  swallows ANSI escape sequences (arrow keys) and other control characters, caps the
  line length and decodes UTF-8 with errors replaced. A serial terminal does no local
  echo, so the console echoes what it accepts, and erases with ``"\\b \\b"``.
* :class:`ConsoleCommands` turns a line into response lines, asking an injected
  :class:`ConsoleBackend` (the agent, seen through a narrow seam) for the answers.
* :class:`SerialConsole` is the asyncio adapter over a pyserial port: one daemon
  reader thread hands bytes to the loop with ``call_soon_threadsafe`` (one crossing of threads);
  one task, owned and joined by :meth:`SerialConsole.close`, runs commands one at a
  time and writes through the port from a worker thread (a stuck port cannot block
  the camera's event loop; ``write_timeout`` bounds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from camera.errors import PeercamError
from camera.status import DeviceStatus

__all__ = [
    "DEFAULT_BAUDRATE",
    "MAX_LINE",
    "PROMPT",
    "CommandLine",
    "ConsoleBackend",
    "ConsoleCommands",
    "ConsoleError",
    "ConsoleEvent",
    "ConsoleProtocol",
    "LineTooLong",
    "SerialConsole",
]

logger = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 115200
MAX_LINE = 256
"""Longest command line, in bytes (UTF-8); a longer one is refused as a whole."""
PROMPT = "peercam> "
BANNER = "peercam console: type 'help' for commands"
EOL = b"\r\n"
"""Line ending sent: a raw serial terminal needs both (no ONLCR translation)."""

# Bytes the line discipline acts on (ASCII control codes).
ETX = 0x03  # Ctrl-C: abandon the line
BS = 0x08
LF = 0x0A
CR = 0x0D
NAK = 0x15  # Ctrl-U: erase the line
ESC = 0x1B
DEL = 0x7F  # what most terminals send for Backspace
BEL = b"\x07"
ERASE = b"\b \b"  # back one column, blank it, back again


class ConsoleError(PeercamError, OSError):
    """The console's serial port cannot be opened."""


# --- Line discipline (sans-I/O) ---------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    """A complete line, as typed (without its line ending)."""

    text: str
    """Decoded as UTF-8 with errors replaced; may be empty (Enter alone, or Ctrl-C)."""


@dataclass(frozen=True)
class LineTooLong:
    """A line longer than the limit ended; it was discarded as a whole."""

    limit: int
    """The limit in bytes, for the error message."""


ConsoleEvent = CommandLine | LineTooLong


class _Escape(enum.IntEnum):
    """Where we are inside an escape sequence (ECMA-48 section 5.3 / 5.4)."""

    NONE = 0
    ESC = 1  # after ESC
    CSI = 2  # after ESC [ : parameter and intermediate bytes until a final byte
    SS3 = 3  # after ESC O : exactly one more byte (keypad / F1..F4)


class ConsoleProtocol:
    """The console's line discipline: no I/O, no asyncio, no serial.

    Feed bytes with :meth:`receive`, take events with :meth:`next_event` (one at a
    time, so that the echo of a pasted second line goes out after the answer to the
    first), and send whatever :meth:`data_to_send` returns after each step.
    """

    def __init__(self, *, max_line: int = MAX_LINE, echo: bool = True, prompt: str = PROMPT
                 ) -> None:
        if max_line < 1:
            raise ValueError(f"max_line {max_line!r} must be at least 1")
        self.max_line = max_line
        self.echo = echo
        self.prompt = prompt
        self._input = bytearray()
        self._read = 0
        """``_input[_read:]`` is received and not yet processed."""
        self._line = bytearray()
        """The line being edited."""
        self._overflow = False
        self._after_cr = False
        self._escape = _Escape.NONE
        self._output = bytearray()

    # Input

    def receive(self, data: bytes) -> None:
        """Queue received bytes; :meth:`next_event` processes them."""
        self._input += data

    def next_event(self) -> ConsoleEvent | None:
        """Process queued bytes up to the next line end; None once they run out."""
        data, start = self._input, self._read
        for index in range(start, len(data)):
            event = self._step(data[index])
            if event is not None:
                self._read = index + 1
                return event
        data.clear()
        self._read = 0
        return None

    def _step(self, byte: int) -> ConsoleEvent | None:
        after_cr, self._after_cr = self._after_cr, False
        if self._escape != _Escape.NONE:
            if byte >= 0x20:
                self._step_escape(byte)
                return None
            # A control character inside a sequence is acted on and ends it (ECMA-48 5.5).
            self._escape = _Escape.NONE
        if byte == CR:
            self._after_cr = True
            return self._end_line()
        if byte == LF:
            # CRLF is one line end; a lone LF is one too.
            return None if after_cr else self._end_line()
        if byte in (BS, DEL):
            self._erase(1)
        elif byte == NAK:
            self._erase(len(self._line))
        elif byte == ETX:
            self._echo(b"^C" + EOL)
            self._reset()
            return CommandLine("")
        elif byte == ESC:
            self._escape = _Escape.ESC
        elif byte < 0x20:
            pass  # other C0 controls (NUL, tab, bell, ...) mean nothing here
        else:
            self._append(byte)
        return None

    def _step_escape(self, byte: int) -> None:
        if self._escape == _Escape.ESC:
            self._escape = {ord("["): _Escape.CSI, ord("O"): _Escape.SS3}.get(byte, _Escape.NONE)
        elif self._escape == _Escape.SS3:
            self._escape = _Escape.NONE
        elif not 0x20 <= byte <= 0x3F:
            # CSI: a final byte (0x40..0x7E), or anything unexpected, ends it.
            self._escape = _Escape.NONE

    def _append(self, byte: int) -> None:
        if self._overflow:
            return
        if len(self._line) >= self.max_line:
            self._overflow = True
            self._echo(BEL)  # the only feedback until Enter: the line is already lost
            return
        self._line.append(byte)
        self._echo(bytes((byte,)))

    def _erase(self, characters: int) -> None:
        if self._overflow:
            return
        for _ in range(characters):
            if not self._line:
                return
            del self._line[_last_character_start(self._line):]
            self._echo(ERASE)

    def _end_line(self) -> ConsoleEvent:
        self._echo(EOL)
        event: ConsoleEvent
        if self._overflow:
            event = LineTooLong(self.max_line)
        else:
            event = CommandLine(self._line.decode("utf-8", errors="replace"))
        self._reset()
        return event

    def _reset(self) -> None:
        self._line.clear()
        self._overflow = False

    def _echo(self, data: bytes) -> None:
        if self.echo:
            self._output += data

    # Output

    def send_line(self, text: str) -> None:
        """Queue ``text`` as one or more lines (split at newlines), each ending CRLF."""
        for line in text.splitlines() or [""]:
            self._output += _printable(line).encode("utf-8") + EOL

    def send_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.send_line(line)

    def send_prompt(self) -> None:
        self._output += self.prompt.encode("utf-8")

    def data_to_send(self) -> bytes:
        """Everything queued for the terminal since the last call (echo and output)."""
        data = bytes(self._output)
        self._output.clear()
        return data


def _last_character_start(line: bytearray) -> int:
    """Where the last UTF-8 character of ``line`` starts (one byte if it is not valid)."""
    last = len(line) - 1
    start = last
    # Step back over at most three continuation bytes (10xxxxxx) to their lead byte.
    while start > 0 and last - start < 3 and line[start] & 0xC0 == 0x80:
        start -= 1
    lead = line[start]
    expected = 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else (
        4 if lead & 0xF8 == 0xF0 else 0
    )
    return start if expected == last - start + 1 else last


def _printable(text: str) -> str:
    """Neutralise control characters, so no answer can drive the user's terminal."""
    return "".join(
        "?" if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F else ch for ch in text
    )


# --- Commands ---------------------------------------------------------------------


class ConsoleBackend(Protocol):
    """What the console asks the camera; the agent provides it (through an adapter)."""

    @property
    def device_id(self) -> str: ...

    async def status(self) -> DeviceStatus:
        """The device's status record (the same one ``peercam status`` prints)."""
        ...

    async def pair(self) -> tuple[str, float]:
        """Open a pairing window: (the pairing link, seconds it stays open)."""
        ...


Handler = Callable[[], Awaitable[list[str]]]


class ConsoleCommands:
    """Line in, response lines out. Commands are case-insensitive and take no arguments.

    A backend that raises gives an ``error: ...`` line: the console never dies of it.
    Only the pairing link, which the user asked for, is ever secret; nothing else
    secret is printed (the rendezvous URL loses any credentials, query and path).
    """

    def __init__(self, backend: ConsoleBackend, *, version: str | None = None) -> None:
        self.backend = backend
        self._version = version
        self.commands: dict[str, tuple[str, Handler]] = {
            "help": ("this list", self.help),
            "status": ("state, device ID, rendezvous, NAT type, source fps, viewers",
                       self.status),
            "id": ("the device ID", self.device_id),
            "nat": ("the NAT type and how it was found", self.nat),
            "pair": ("open a pairing window and print the pairing link", self.pair),
            "version": ("the peercam version", self.version),
        }

    async def handle(self, event: ConsoleEvent) -> list[str]:
        """The response lines to one event (no prompt)."""
        if isinstance(event, LineTooLong):
            return [f"error: line too long (over {event.limit} bytes), ignored"]
        return await self.run(event.text)

    async def run(self, line: str) -> list[str]:
        words = line.split()
        if not words:
            return []
        name = words[0].lower()
        entry = self.commands.get(name)
        if entry is None:
            return [f"error: unknown command '{words[0]}' (try help)"]
        if len(words) > 1:
            return [f"error: {name} takes no arguments"]
        try:
            return await entry[1]()
        except PeercamError as exc:
            # Raised on purpose: its message is written for people.
            return [f"error: {name} failed: {exc}"]
        except Exception as exc:
            logger.exception("console command %r failed", name)
            return [f"error: {name} failed ({type(exc).__name__}; see the camera's log)"]

    async def help(self) -> list[str]:
        width = max(map(len, self.commands))
        return ["commands:"] + [
            f"  {name.ljust(width)}  {summary}" for name, (summary, _) in self.commands.items()
        ]

    async def status(self) -> list[str]:
        status = await self.backend.status()
        link = "connected" if status.rendezvous.connected else "not connected"
        url = _public_url(status.rendezvous.url)
        if url is not None:
            link += f" ({url})"
        return [
            f"state: {_text(status.state)}",
            f"device id: {_text(status.device_id or self.backend.device_id)}",
            f"rendezvous: {link}",
            f"nat type: {_text(status.nat.type, 'unknown (not checked yet)')}",
            f"source fps: {status.source.fps:.1f}",
            f"viewers: {len(status.viewers)}",
        ]

    async def device_id(self) -> list[str]:
        return [self.backend.device_id]

    async def nat(self) -> list[str]:
        nat = (await self.backend.status()).nat
        lines = [f"nat type: {_text(nat.type, 'unknown (not checked yet)')}"]
        summary = nat.summary
        if summary is not None:
            lines += [line for line in summary.splitlines() if line.strip()]
        return lines

    async def pair(self) -> list[str]:
        link, ttl = await self.backend.pair()
        return [
            f"pairing link: {link}",
            f"open for {_duration(ttl)}: whoever opens this link in that time can pair",
        ]

    async def version(self) -> list[str]:
        version = self._version
        if version is None:
            try:
                version = metadata.version("peercam")
            except metadata.PackageNotFoundError:
                version = "unknown"
        return [f"peercam {version}"]


def _text(value: object, missing: str = "unknown") -> str:
    return missing if value is None or value == "" else str(value)


def _public_url(url: object) -> str | None:
    """scheme://host[:port] only: credentials, tokens in the query or path stay hidden."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not parts.scheme or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host if port is None else f"{host}:{port}", "", "", ""))


def _duration(seconds: float) -> str:
    if seconds < 90:
        whole = max(0, round(seconds))
        return f"{whole} second" + ("" if whole == 1 else "s")
    minutes = round(seconds / 60)
    return f"{minutes} minutes"


# --- asyncio adapter over pyserial ------------------------------------------------


class _Port(Protocol):
    """What the console uses of a pyserial port."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1, /) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def close(self) -> None: ...


class SerialConsole:
    """Serves the console on the serial port at ``url`` from :meth:`start` to :meth:`close`.

    ``url`` is anything ``serial.serial_for_url`` opens: ``/dev/ttyUSB0``,
    ``/dev/serial0``, a pty, ``rfc2217://host:port``. When the port goes away
    mid-run (a USB adapter unplugged) the error is logged, the port released and
    :attr:`lost` set; the rest of the camera is not affected.
    """

    def __init__(
        self,
        url: str,
        backend: ConsoleBackend,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        max_line: int = MAX_LINE,
        echo: bool = True,
        read_timeout: float = 0.2,
        write_timeout: float = 2.0,
        command_timeout: float = 10.0,
        version: str | None = None,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        """Longest the reader thread blocks in one read: bounds how long close waits."""
        self.write_timeout = write_timeout
        """A write that cannot finish in this time (a stuck port) is dropped."""
        self.command_timeout = command_timeout
        """A command whose backend does not answer in this time gives an error line."""
        self.max_pending = 16 * max_line
        """Received bytes waiting for a slow command beyond this are dropped (a flood)."""
        self._protocol = ConsoleProtocol(max_line=max_line, echo=echo)
        self._commands = ConsoleCommands(backend, version=version)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: _Port | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pending = 0
        self._dropping = False
        self._writing: asyncio.Future[BaseException | None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._releasing: asyncio.Task[None] | None = None
        self._lost = False
        self._closed = False

    @property
    def lost(self) -> bool:
        """The port failed while serving (and was released)."""
        return self._lost

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Open the port and serve; raise :class:`ConsoleError` if it cannot be opened."""
        if self._worker is not None or self._closed:
            raise RuntimeError(f"serial console {self.url}: start() called twice")
        # Imported here: pyserial is only needed when a console port is configured.
        import serial

        try:
            # In a thread: rfc2217:// and some USB adapters can take a while to open.
            port: _Port = await asyncio.to_thread(
                serial.serial_for_url,
                self.url,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=self.read_timeout,
                write_timeout=self.write_timeout,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ConsoleError(f"cannot open serial console port {self.url!r}: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._port = port
        self._reader = threading.Thread(
            target=self._read_loop,
            args=(port, self._loop),
            name=f"peercam-console-reader {self.url}",
            daemon=True,
        )
        self._reader.start()
        self._worker = asyncio.create_task(self._serve(), name=f"console {self.url}")
        logger.info("serial console on %s at %d baud", self.url, self.baudrate)

    async def close(self) -> None:
        """Stop the command task and the reader thread, join them, close the port. Safe twice."""
        if self._closed:
            return
        self._closed = True
        worker = self._worker
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        await self._release()

    # Reader thread

    def _read_loop(self, port: _Port, loop: asyncio.AbstractEventLoop) -> None:
        import serial

        while not self._stopping.is_set():
            try:
                data = port.read(1)  # returns after read_timeout with b"" when idle
                if data:
                    waiting = port.in_waiting
                    if waiting:
                        data += port.read(waiting)
            except (serial.SerialException, OSError) as exc:
                if not self._stopping.is_set():
                    _call_soon(loop, self._port_lost, exc)
                return
            if data and not _call_soon(loop, self._received, data):
                return  # the loop is gone: nobody is listening any more

    # Loop side

    def _received(self, data: bytes) -> None:
        if self._closed or self._lost:
            return
        if self._pending + len(data) > self.max_pending:
            if not self._dropping:
                self._dropping = True
                logger.warning("serial console %s: input flood, dropping bytes", self.url)
            return
        self._dropping = False
        self._pending += len(data)
        self._inbox.put_nowait(data)

    def _port_lost(self, exc: BaseException) -> None:
        if self._lost or self._closed:
            return
        self._lost = True
        logger.error(
            "serial console %s lost (%s): console stopped, the camera goes on", self.url, exc
        )
        self._inbox.put_nowait(None)  # ends _serve, which releases the port

    async def _serve(self) -> None:
        protocol = self._protocol
        try:
            protocol.send_line(BANNER)
            protocol.send_prompt()
            await self._flush()
            while not self._lost:
                data = await self._inbox.get()
                if data is None:
                    break
                self._pending -= len(data)
                protocol.receive(data)
                while (event := protocol.next_event()) is not None:
                    await self._flush()  # the echo of this line, before its answer
                    protocol.send_lines(await self._answer(event))
                    protocol.send_prompt()
                    await self._flush()
                await self._flush()  # the echo of a partial line
        except Exception:
            logger.exception("serial console %s failed", self.url)
        finally:
            # Shielded: close() cancelling us must not cut the release short.
            await asyncio.shield(self._release())

    async def _answer(self, event: ConsoleEvent) -> list[str]:
        try:
            return await asyncio.wait_for(self._commands.handle(event), self.command_timeout)
        except TimeoutError:
            logger.warning("serial console: command timed out after %g s", self.command_timeout)
            return [f"error: no answer within {self.command_timeout:g} s"]

    async def _flush(self) -> None:
        data = self._protocol.data_to_send()
        port, loop = self._port, self._loop
        if not data or port is None or loop is None or self._lost:
            return
        # One write at a time, in order (only this task writes). Shielded: if close()
        # cancels us mid-write, it still waits for the write before closing the port.
        self._writing = loop.run_in_executor(None, self._write_blocking, port, data)
        error = await asyncio.shield(self._writing)
        self._writing = None
        if error is not None:
            self._port_lost(error)

    def _write_blocking(self, port: _Port, data: bytes) -> BaseException | None:
        import serial

        try:
            port.write(data)
        except serial.SerialTimeoutException:
            # Flow control held, or nobody drains the line: drop it, stay alive.
            logger.warning("serial console %s: write timed out, %d bytes dropped",
                           self.url, len(data))
        except (serial.SerialException, OSError) as exc:
            return exc
        return None

    def _release(self) -> asyncio.Task[None]:
        """The one release of the port (on loss or close); close() awaits it."""
        if self._releasing is None:
            self._releasing = asyncio.create_task(
                self._release_port(), name=f"console {self.url} release"
            )
        return self._releasing

    async def _release_port(self) -> None:
        """Stop the reader, wait for a write in flight, then close the port."""
        port, self._port = self._port, None
        if port is None:
            return
        self._stopping.set()
        # posix pyserial can abort a blocked read/write at once; others time out.
        for cancel in ("cancel_read", "cancel_write"):
            with contextlib.suppress(AttributeError, OSError):
                getattr(port, cancel)()
        if self._writing is not None:
            await asyncio.wait({self._writing}, timeout=self.write_timeout + 1.0)
        reader = self._reader
        if reader is not None:
            await asyncio.to_thread(reader.join, self.read_timeout + 1.0)
            if reader.is_alive():
                # Closing the fd under a blocked read could hand it to someone else.
                logger.error("serial console %s: reader thread did not stop", self.url)
                return
        with contextlib.suppress(OSError):
            port.close()
        logger.info("serial console on %s closed", self.url)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
               ) -> bool:
    """Cross from the reader thread to the loop (the one thread crossing); False if it closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True
