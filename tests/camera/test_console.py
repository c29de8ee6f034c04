"""The serial console: line discipline (bytes in, events and bytes out), the commands
(over a fake backend, the layer below), and the adapter over a real pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from camera.console import (
    CommandLine,
    ConsoleCommands,
    ConsoleError,
    ConsoleEvent,
    ConsoleProtocol,
    LineTooLong,
    SerialConsole,
)
from camera.errors import PeercamError
from camera.status import DeviceStatus, LinkStatus, NatStatus, SourceStatus, ViewerStatus
from tests.conftest import scaled

DEVICE_ID = "K7QM-42XD-PB3N"
LINK = "https://rv.example.net/#device=K7QM-42XD-PB3N&pair=s3cret-pairing-token"
PROMPT = b"peercam> "
NAT_SUMMARY = (
    "server: 192.0.2.1:3478\nmapping: endpoint-independent\n"
    "filtering: address-and-port-dependent\nnat_type: port-restricted-cone\n"
)


class FakeBackend:
    """Stands in for the agent; ``fail``/``hang`` name the methods that misbehave."""

    device_id = DEVICE_ID

    def __init__(self) -> None:
        self.fail: dict[str, BaseException] = {}
        self.hang: set[str] = set()
        self.pairs = 0
        self.nat_type: str | None = "port-restricted-cone"
        self.url = "wss://operator:hunter2@rv.example.net:8443/camera?token=abc"

    async def _misbehave(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]
        if name in self.hang:
            await asyncio.Event().wait()

    async def status(self) -> DeviceStatus:
        await self._misbehave("status")
        return status_record(
            rendezvous=LinkStatus(self.url, "registered", True, 0, False,
                                  last_error="NEVER-PRINT-THIS"),
            nat=NatStatus(self.nat_type, NAT_SUMMARY if self.nat_type else None),
        )

    async def pair(self) -> tuple[str, float]:
        await self._misbehave("pair")
        self.pairs += 1
        return LINK, 600.0


def status_record(**fields: Any) -> DeviceStatus:
    """A status as the agent builds it, with these fields changed."""
    viewer = ViewerStatus("a" * 8, "phone", "K3MP", True, "host->srflx", False, None, None)
    base: dict[str, Any] = {
        "state": "streaming",
        "device_id": DEVICE_ID,
        "uptime": 12.0,
        "rendezvous": LinkStatus("ws://rv.example.net", "registered", True, 0, False),
        "nat": NatStatus(None, None),
        "source": SourceStatus("testpattern", 29.97, 1234, 0.01, 0, "1280x720"),
        "viewers": (viewer, viewer),
        "pairing_open": False,
        "viewers_paired": 2,
        "refusals": 0,
    }
    return DeviceStatus(**{**base, **fields})


STATUS_LINES = [
    "state: streaming",
    f"device id: {DEVICE_ID}",
    "rendezvous: connected (wss://rv.example.net:8443)",
    "nat type: port-restricted-cone",
    "source fps: 30.0",
    "viewers: 2",
]


def crlf(*lines: str) -> bytes:
    return b"".join(line.encode() + b"\r\n" for line in lines)


# --- Line discipline (sans-I/O) -----------------------------------------------------


def feed(protocol: ConsoleProtocol, data: bytes) -> tuple[list[ConsoleEvent], bytes]:
    protocol.receive(data)
    events = []
    while (event := protocol.next_event()) is not None:
        events.append(event)
    return events, protocol.data_to_send()


@pytest.mark.parametrize(
    ("data", "echo"),
    [(b"status\r", b"status\r\n"), (b"status\n", b"status\r\n"), (b"status\r\n", b"status\r\n")],
    ids=["cr", "lf", "crlf"],
)
def test_each_line_ending_ends_one_line(data: bytes, echo: bytes) -> None:
    assert feed(ConsoleProtocol(), data) == ([CommandLine("status")], echo)


def test_a_line_may_arrive_in_pieces() -> None:
    protocol = ConsoleProtocol()
    assert feed(protocol, b"sta") == ([], b"sta")
    assert feed(protocol, b"tus\r") == ([CommandLine("status")], b"tus\r\n")


def test_crlf_split_across_reads_is_one_line_end() -> None:
    protocol = ConsoleProtocol()
    assert feed(protocol, b"id\r") == ([CommandLine("id")], b"id\r\n")
    assert feed(protocol, b"\n") == ([], b"")
    # ...but a second LF, or LF after anything else, is a line end of its own.
    assert feed(protocol, b"\n") == ([CommandLine("")], b"\r\n")


def test_events_come_one_at_a_time_with_their_own_echo() -> None:
    protocol = ConsoleProtocol()
    protocol.receive(b"id\rnat\rver")
    assert protocol.next_event() == CommandLine("id")
    assert protocol.data_to_send() == b"id\r\n"
    assert protocol.next_event() == CommandLine("nat")
    assert protocol.data_to_send() == b"nat\r\n"
    assert protocol.next_event() is None
    assert protocol.data_to_send() == b"ver"


def test_backspace_and_del_erase_one_character() -> None:
    events, out = feed(ConsoleProtocol(), b"ix\x7fq\x08d\r")
    assert events == [CommandLine("id")]
    assert out == b"ix\b \bq\b \bd\r\n"


def test_backspace_erases_a_whole_utf8_character() -> None:
    events, out = feed(ConsoleProtocol(), "aé€😀".encode() + b"\x7f\x7f\x7fb\r")
    assert events == [CommandLine("ab")]
    assert out == "aé€😀".encode() + b"\b \b" * 3 + b"b\r\n"


def test_backspace_on_an_empty_line_does_nothing() -> None:
    assert feed(ConsoleProtocol(), b"\x7f\x08\r") == ([CommandLine("")], b"\r\n")


def test_backspace_on_invalid_utf8_erases_one_byte() -> None:
    events, _ = feed(ConsoleProtocol(), b"a\x80\x80\x7f\r")
    assert events == [CommandLine("a\ufffd")]


def test_ctrl_u_erases_the_line_and_ctrl_c_abandons_it() -> None:
    events, out = feed(ConsoleProtocol(), b"xy\x15id\r")
    assert events == [CommandLine("id")]
    assert out == b"xy\b \b\b \bid\r\n"
    events, out = feed(ConsoleProtocol(), b"stat\x03")
    assert events == [CommandLine("")]
    assert out == b"stat^C\r\n"


def test_escape_sequences_and_control_characters_are_swallowed() -> None:
    # Up arrow, Ctrl-Right, F1 (SS3), a lone ESC, NUL, tab, bell.
    events, out = feed(ConsoleProtocol(), b"\x00i\x1b[A\x1b[1;5C\x01\td\x1bOP\x07\x1bx\r")
    assert events == [CommandLine("id")]
    assert out == b"id\r\n"


def test_a_line_end_inside_an_escape_sequence_still_ends_the_line() -> None:
    assert feed(ConsoleProtocol(), b"id\x1b[\r")[0] == [CommandLine("id")]


def test_invalid_utf8_is_replaced() -> None:
    events, _ = feed(ConsoleProtocol(), b"\xff\xfeid\xc3\r")
    assert events == [CommandLine("\ufffd\ufffdid\ufffd")]


def test_an_over_long_line_is_refused_whole_and_the_next_one_works() -> None:
    protocol = ConsoleProtocol(max_line=4)
    events, out = feed(protocol, b"abcdefg\x7f\r")
    assert events == [LineTooLong(4)]
    assert out == b"abcd\x07\r\n"  # one bell, no erase of a line already lost
    assert feed(protocol, b"abcd\r") == ([CommandLine("abcd")], b"abcd\r\n")


def test_echo_can_be_turned_off() -> None:
    assert feed(ConsoleProtocol(echo=False), b"ix\x7fd\r") == ([CommandLine("id")], b"")


def test_output_lines_end_crlf_and_cannot_drive_the_terminal() -> None:
    protocol = ConsoleProtocol(prompt="> ")
    protocol.send_line("two\nlines")
    protocol.send_lines(["evil \x1b[2J\x9b", ""])
    protocol.send_prompt()
    assert protocol.data_to_send() == b"two\r\nlines\r\nevil ?[2J?\r\n\r\n> "
    assert protocol.data_to_send() == b""


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^max_line 0 must be at least 1$"):
        ConsoleProtocol(max_line=0)


# --- Commands (fake backend) --------------------------------------------------------


async def test_commands_answer_from_the_backend() -> None:
    commands = ConsoleCommands(FakeBackend(), version="1.2.3")
    assert await commands.run("status") == STATUS_LINES
    assert await commands.run("id") == [DEVICE_ID]
    assert await commands.run("version") == ["peercam 1.2.3"]
    assert await commands.run("nat") == [
        "nat type: port-restricted-cone",
        "server: 192.0.2.1:3478",
        "mapping: endpoint-independent",
        "filtering: address-and-port-dependent",
        "nat_type: port-restricted-cone",
    ]
    assert await commands.run("pair") == [
        f"pairing link: {LINK}",
        "open for 10 minutes: whoever opens this link in that time can pair",
    ]


async def test_commands_are_case_insensitive_and_take_no_arguments() -> None:
    commands = ConsoleCommands(FakeBackend(), version="1")
    assert await commands.run("  ID  ") == [DEVICE_ID]
    assert await commands.run("Version") == ["peercam 1"]
    assert await commands.run("id now") == ["error: id takes no arguments"]
    assert await commands.run("reboot") == ["error: unknown command 'reboot' (try help)"]
    assert await commands.run("   ") == []


async def test_help_lists_every_command() -> None:
    lines = await ConsoleCommands(FakeBackend()).run("help")
    assert lines[0] == "commands:"
    assert [line.split()[0] for line in lines[1:]] == [
        "help", "status", "id", "nat", "pair", "version"
    ]


async def test_status_of_a_camera_not_yet_connected() -> None:
    class Early(FakeBackend):
        async def status(self) -> DeviceStatus:
            return status_record(
                state="registering",
                rendezvous=LinkStatus("not a url", "connecting", False, 3, False),
                viewers=(),
            )

    assert await ConsoleCommands(Early()).run("status") == [
        "state: registering",
        f"device id: {DEVICE_ID}",
        "rendezvous: not connected",
        "nat type: unknown (not checked yet)",
        "source fps: 30.0",
        "viewers: 0",
    ]


async def test_nat_before_the_check_ran() -> None:
    backend = FakeBackend()
    backend.nat_type = None
    assert await ConsoleCommands(backend).run("nat") == ["nat type: unknown (not checked yet)"]


async def test_the_rendezvous_url_loses_credentials_query_and_path() -> None:
    backend = FakeBackend()
    backend.url = "wss://[2001:db8::1]/camera/s3cret#frag"
    lines = await ConsoleCommands(backend).run("status")
    assert lines[2] == "rendezvous: connected (wss://[2001:db8::1])"
    text = "\n".join(await ConsoleCommands(FakeBackend()).run("status"))
    for secret in ("hunter2", "operator", "token", "NEVER-PRINT-THIS", "/camera"):
        assert secret not in text


@pytest.mark.parametrize(
    ("ttl", "said"),
    [(1.0, "1 second"), (45.4, "45 seconds"), (300.0, "5 minutes"), (3600.0, "60 minutes")],
)
async def test_pair_says_how_long_the_window_is_open(ttl: float, said: str) -> None:
    class Timed(FakeBackend):
        async def pair(self) -> tuple[str, float]:
            return LINK, ttl

    lines = await ConsoleCommands(Timed()).run("pair")
    assert lines[1].startswith(f"open for {said}:")


async def test_a_failing_backend_gives_an_error_line(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    backend.fail["status"] = KeyError("state")
    backend.fail["pair"] = PeercamError("pairing is disabled on this camera")
    commands = ConsoleCommands(backend)
    with caplog.at_level(logging.ERROR, logger="camera.console"):
        assert await commands.run("status") == [
            "error: status failed (KeyError; see the camera's log)"
        ]
    assert "console command 'status' failed" in caplog.text
    assert await commands.run("pair") == [
        "error: pair failed: pairing is disabled on this camera"
    ]
    assert await commands.handle(LineTooLong(256)) == [
        "error: line too long (over 256 bytes), ignored"
    ]


# --- The adapter over a real pty pair -----------------------------------------------


class Terminal:
    """The laptop's end of the cable: the pty master, read without blocking."""

    def __init__(self, master: int) -> None:
        self.master = master
        os.set_blocking(master, False)
        self.buffer = b""

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    async def until(self, end: bytes, timeout: float = 2.0) -> bytes:
        """Everything received up to and including ``end``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + scaled(timeout)
        while end not in self.buffer:
            try:
                self.buffer += os.read(self.master, 4096)
                continue
            except BlockingIOError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"no {end!r} within {timeout} s; got {self.buffer!r}")
            await asyncio.sleep(0.005)
        head, _, self.buffer = self.buffer.partition(end)
        return head + end

    async def command(self, line: bytes) -> bytes:
        """Type ``line`` and return what came back, up to the next prompt."""
        self.type(line)
        return await self.until(PROMPT)


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(slave)
        with contextlib.suppress(OSError):  # a test may have unplugged it already
            os.close(master)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def console(pty: tuple[int, str], backend: FakeBackend) -> AsyncIterator[SerialConsole]:
    _, path = pty
    serial_console = SerialConsole(path, backend, read_timeout=0.05, command_timeout=scaled(0.2),
                                   version="9.9.9")
    await serial_console.start()
    try:
        yield serial_console
    finally:
        await serial_console.close()


@pytest.fixture
async def terminal(pty: tuple[int, str], console: SerialConsole) -> Terminal:
    term = Terminal(pty[0])
    assert await term.until(PROMPT) == crlf("peercam console: type 'help' for commands") + PROMPT
    return term


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("peercam-console-reader")]


async def test_every_command_over_the_wire(terminal: Terminal) -> None:
    assert await terminal.command(b"id\r") == b"id\r\n" + crlf(DEVICE_ID) + PROMPT
    assert await terminal.command(b"status\r") == b"status\r\n" + crlf(*STATUS_LINES) + PROMPT
    assert await terminal.command(b"version\r") == b"version\r\n" + crlf("peercam 9.9.9") + PROMPT
    assert await terminal.command(b"nat\r") == b"nat\r\n" + crlf(
        "nat type: port-restricted-cone",
        "server: 192.0.2.1:3478",
        "mapping: endpoint-independent",
        "filtering: address-and-port-dependent",
        "nat_type: port-restricted-cone",
    ) + PROMPT
    help_text = await terminal.command(b"HELP\r")
    assert help_text.startswith(b"HELP\r\ncommands:\r\n  help     this list\r\n")
    assert help_text.count(b"\r\n") == 8
    assert await terminal.command(b"x\r") == b"x\r\n" + crlf(
        "error: unknown command 'x' (try help)"
    ) + PROMPT


async def test_pair_prints_the_backends_link(terminal: Terminal, backend: FakeBackend) -> None:
    assert await terminal.command(b"pair\r") == b"pair\r\n" + crlf(
        f"pairing link: {LINK}",
        "open for 10 minutes: whoever opens this link in that time can pair",
    ) + PROMPT
    assert backend.pairs == 1


async def test_editing_over_the_wire(terminal: Terminal) -> None:
    assert await terminal.command(b"ix\x7fd\r") == b"ix\b \bd\r\n" + crlf(DEVICE_ID) + PROMPT


async def test_crlf_lone_cr_and_lone_lf_each_end_one_line(terminal: Terminal) -> None:
    terminal.type(b"id\r\nid\rversion\n")
    assert await terminal.until(PROMPT) == b"id\r\n" + crlf(DEVICE_ID) + PROMPT
    assert await terminal.until(PROMPT) == b"id\r\n" + crlf(DEVICE_ID) + PROMPT
    assert await terminal.until(PROMPT) == b"version\r\n" + crlf("peercam 9.9.9") + PROMPT
    # No stray empty line from the LF of the CRLF: the next thing back is this answer.
    assert await terminal.command(b"id\r") == b"id\r\n" + crlf(DEVICE_ID) + PROMPT


async def test_over_long_line_then_a_good_command(terminal: Terminal) -> None:
    answer = await terminal.command(b"s" * 300 + b"\r")
    assert answer == b"s" * 256 + b"\x07\r\n" + crlf(
        "error: line too long (over 256 bytes), ignored"
    ) + PROMPT
    assert await terminal.command(b"id\r") == b"id\r\n" + crlf(DEVICE_ID) + PROMPT


async def test_garbage_does_not_crash_it(terminal: Terminal) -> None:
    answer = await terminal.command(b"\x00\xff\xfe\x1b[A\x01\x1b\x07zz\r")
    assert answer == b"\xff\xfezz\r\n" + crlf(
        "error: unknown command '\ufffd\ufffdzz' (try help)"
    ) + PROMPT
    assert await terminal.command(b"id\r") == b"id\r\n" + crlf(DEVICE_ID) + PROMPT


async def test_a_raising_backend_gives_an_error_and_the_console_goes_on(
    terminal: Terminal, backend: FakeBackend
) -> None:
    backend.fail["status"] = RuntimeError("boom")
    assert await terminal.command(b"status\r") == b"status\r\n" + crlf(
        "error: status failed (RuntimeError; see the camera's log)"
    ) + PROMPT
    assert await terminal.command(b"id\r") == b"id\r\n" + crlf(DEVICE_ID) + PROMPT


async def test_a_hung_backend_times_out_and_the_console_goes_on(
    terminal: Terminal, backend: FakeBackend, console: SerialConsole
) -> None:
    backend.hang.add("pair")
    answer = await terminal.command(b"pair\r")
    assert answer == b"pair\r\n" + crlf(f"error: no answer within {console.command_timeout:g} s") \
        + PROMPT
    assert await terminal.command(b"id\r") == b"id\r\n" + crlf(DEVICE_ID) + PROMPT


async def test_pasted_lines_are_answered_in_order(terminal: Terminal) -> None:
    terminal.type(b"version\rid\r")
    assert await terminal.until(PROMPT) == b"version\r\n" + crlf("peercam 9.9.9") + PROMPT
    assert await terminal.until(PROMPT) == b"id\r\n" + crlf(DEVICE_ID) + PROMPT


async def test_close_is_idempotent_and_joins_the_reader(
    terminal: Terminal, console: SerialConsole
) -> None:
    assert len(reader_threads()) == 1
    await console.close()
    assert reader_threads() == []
    assert console.closed
    await console.close()
    # The port is closed: nothing answers any more.
    terminal.type(b"id\r")
    await asyncio.sleep(0.1)
    with pytest.raises(BlockingIOError):
        os.read(terminal.master, 100)


async def test_close_while_a_command_runs(terminal: Terminal, backend: FakeBackend,
                                          console: SerialConsole) -> None:
    backend.hang.add("status")
    terminal.type(b"status\r")
    await terminal.until(b"status\r\n")
    await asyncio.wait_for(console.close(), scaled(2))
    assert reader_threads() == []


async def test_an_unplugged_port_stops_the_console_not_the_camera(
    pty: tuple[int, str], console: SerialConsole, terminal: Terminal,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="camera.console"):
        os.close(pty[0])  # the far end hangs up: reads on our side now fail with EIO
        loop = asyncio.get_running_loop()
        deadline = loop.time() + scaled(2)
        while (reader_threads() or not console.lost) and loop.time() < deadline:
            await asyncio.sleep(0.01)
    assert console.lost
    assert reader_threads() == []
    assert f"serial console {console.url} lost" in caplog.text
    await console.close()
    await console.close()


async def test_a_missing_port_is_a_clear_error(backend: FakeBackend) -> None:
    console = SerialConsole("/dev/peercam-no-such-tty", backend)
    with pytest.raises(ConsoleError, match=r"cannot open serial console port "
                                           r"'/dev/peercam-no-such-tty': ") as info:
        await console.start()
    assert isinstance(info.value, PeercamError)
    assert isinstance(info.value, OSError)
    await console.close()
    assert reader_threads() == []


async def test_start_twice_is_a_programming_error(console: SerialConsole) -> None:
    with pytest.raises(RuntimeError, match="start\\(\\) called twice"):
        await console.start()
