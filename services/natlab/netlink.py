"""Just enough netlink for the lab's faults, as bytes in and bytes out. No I/O.

* ctnetlink (conntrack over nfnetlink): dump the table, flush it (what
  ``conntrack -F`` sends), and create an entry (what ``conntrack -I`` sends);
  the lab needs no conntrack(8) tool for it.
* rtnetlink notifications: link, address and route events, decoded into
  ``NetlinkEvent`` records, so tests can see what a program watching netlink in
  a site's namespace sees when the lab takes a link down or moves a host.

Layouts: linux/netlink.h, linux/netfilter/nfnetlink.h,
linux/netfilter/nfnetlink_conntrack.h, linux/rtnetlink.h, linux/if_link.h.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NFGENMSG = struct.Struct("=BBH")

# nfnetlink / ctnetlink
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_TIMEOUT = 7
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3

# rtnetlink
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
EVENT_GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
)
IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RT_TABLE_MAIN = 254
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")


class NetlinkError(OSError):
    """The kernel answered a netlink request with an error."""


@dataclass(frozen=True)
class Message:
    """One netlink message: its type, flags and payload (after the 16-byte header)."""

    type: int
    flags: int
    seq: int
    payload: bytes


def encode(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def decode(data: bytes) -> Iterator[Message]:
    """The messages of one netlink datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise ValueError(f"truncated netlink message of length {length} at {offset}")
        yield Message(msg_type, flags, seq, data[offset + _NLMSGHDR.size : offset + length])
        offset += (length + 3) & ~3


def error_code(message: Message) -> int | None:
    """For an NLMSG_ERROR: 0 (an ack) or a positive errno; None for other messages."""
    if message.type != NLMSG_ERROR:
        return None
    code: int = struct.unpack_from("=i", message.payload)[0]
    return -code


def attribute(kind: int, value: bytes, nested: bool = False) -> bytes:
    header = _NLATTR.pack(_NLATTR.size + len(value), kind | (NLA_F_NESTED if nested else 0))
    return header + value + b"\0" * (-len(value) % 4)


def attributes(data: bytes) -> dict[int, bytes]:
    """Attribute type -> value of one attribute list (the last one wins)."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


# -- conntrack -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tuple:
    """One direction of a conntrack entry (IPv4 TCP or UDP)."""

    protocol: int
    """socket.IPPROTO_UDP or IPPROTO_TCP."""
    source: tuple[str, int]
    destination: tuple[str, int]

    def encode(self) -> bytes:
        ip = attribute(CTA_IP_V4_SRC, socket.inet_aton(self.source[0]))
        ip += attribute(CTA_IP_V4_DST, socket.inet_aton(self.destination[0]))
        proto = attribute(CTA_PROTO_NUM, bytes([self.protocol]))
        proto += attribute(CTA_PROTO_SRC_PORT, struct.pack("!H", self.source[1]))
        proto += attribute(CTA_PROTO_DST_PORT, struct.pack("!H", self.destination[1]))
        return attribute(CTA_TUPLE_IP, ip, nested=True) + attribute(
            CTA_TUPLE_PROTO, proto, nested=True
        )

    @classmethod
    def decode(cls, data: bytes) -> Tuple | None:
        """The tuple, or None if it is not IPv4 TCP/UDP."""
        top = attributes(data)
        ip = attributes(top.get(CTA_TUPLE_IP, b""))
        proto = attributes(top.get(CTA_TUPLE_PROTO, b""))
        if CTA_IP_V4_SRC not in ip or CTA_PROTO_SRC_PORT not in proto:
            return None
        number = proto[CTA_PROTO_NUM][0]
        (sport,) = struct.unpack("!H", proto[CTA_PROTO_SRC_PORT])
        (dport,) = struct.unpack("!H", proto[CTA_PROTO_DST_PORT])
        return cls(
            protocol=number,
            source=(socket.inet_ntoa(ip[CTA_IP_V4_SRC]), sport),
            destination=(socket.inet_ntoa(ip[CTA_IP_V4_DST]), dport),
        )


@dataclass(frozen=True)
class ConntrackEntry:
    """An IPv4 TCP/UDP conntrack entry: what the NAT remembers about one flow."""

    original: Tuple
    reply: Tuple

    @property
    def mapped(self) -> tuple[str, int]:
        """Where the far end sends replies to: the flow's address outside the NAT."""
        return self.reply.destination


def _ct_type(command: int) -> int:
    return (NFNL_SUBSYS_CTNETLINK << 8) | command


def conntrack_dump_request(seq: int) -> bytes:
    return encode(
        _ct_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        _NFGENMSG.pack(socket.AF_INET, 0, 0),
    )


def conntrack_flush_request(seq: int) -> bytes:
    """A delete without a tuple: every entry of every family goes."""
    return encode(
        _ct_type(IPCTNL_MSG_CT_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0),
    )


def conntrack_create_request(seq: int, entry: ConntrackEntry, timeout: int) -> bytes:
    payload = _NFGENMSG.pack(socket.AF_INET, 0, 0)
    payload += attribute(CTA_TUPLE_ORIG, entry.original.encode(), nested=True)
    payload += attribute(CTA_TUPLE_REPLY, entry.reply.encode(), nested=True)
    payload += attribute(CTA_TIMEOUT, struct.pack("!I", timeout))
    return encode(
        _ct_type(IPCTNL_MSG_CT_NEW),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        payload,
    )


def conntrack_entry(message: Message) -> ConntrackEntry | None:
    """The entry in a dump answer, None for other messages and other protocols."""
    if message.type != _ct_type(IPCTNL_MSG_CT_NEW):
        return None
    found = attributes(message.payload[_NFGENMSG.size :])
    if CTA_TUPLE_ORIG not in found or CTA_TUPLE_REPLY not in found:
        return None
    original = Tuple.decode(found[CTA_TUPLE_ORIG])
    reply = Tuple.decode(found[CTA_TUPLE_REPLY])
    if original is None or reply is None:
        return None
    return ConntrackEntry(original, reply)


# -- rtnetlink events ------------------------------------------------------------------


@dataclass(frozen=True)
class NetlinkEvent:
    """One rtnetlink notification, reduced to what a connectivity watcher looks at."""

    kind: str
    """"link", "addr" or "route"."""
    action: str
    """"new" or "del"."""
    index: int
    """The interface index (a route's output interface; 0 if it has none)."""
    ifname: str | None = None
    """Links only."""
    up: bool | None = None
    """Links: administratively up (IFF_UP)."""
    carrier: bool | None = None
    """Links: IFF_LOWER_UP."""
    operstate: str | None = None
    """Links: RFC 2863 state, as ip(8) shows it (lower case)."""
    address: str | None = None
    """Addresses: "IP/prefixlen"; routes: the destination "IP/prefixlen"."""
    gateway: str | None = None
    """Routes: the next hop, if any."""
    family: int = 0


def _ip(family: int, raw: bytes) -> str:
    return str(ipaddress.ip_address(raw if family == socket.AF_INET6 else raw[:4]))


def rtnetlink_event(message: Message) -> NetlinkEvent | None:
    """The event a notification carries; None for other messages and non-main routes."""
    kind = message.type
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        family, _, index, flags, _ = _IFINFOMSG.unpack_from(message.payload)
        found = attributes(message.payload[_IFINFOMSG.size :])
        name = found.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace") or None
        state = found.get(IFLA_OPERSTATE)
        operstate = None
        if state:
            operstate = OPERSTATES[state[0]] if state[0] < len(OPERSTATES) else str(state[0])
        return NetlinkEvent(
            kind="link",
            action="new" if kind == RTM_NEWLINK else "del",
            index=index,
            ifname=name,
            up=bool(flags & IFF_UP),
            carrier=bool(flags & IFF_LOWER_UP),
            operstate=operstate,
            family=family,
        )
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        family, prefixlen, _, _, index = _IFADDRMSG.unpack_from(message.payload)
        found = attributes(message.payload[_IFADDRMSG.size :])
        raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
        return NetlinkEvent(
            kind="addr",
            action="new" if kind == RTM_NEWADDR else "del",
            index=index,
            address=f"{_ip(family, raw)}/{prefixlen}" if raw else None,
            family=family,
        )
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        family, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(message.payload)
        if table != RT_TABLE_MAIN:
            return None  # local and broadcast routes: noise for a watcher
        found = attributes(message.payload[_RTMSG.size :])
        zero = "0.0.0.0" if family == socket.AF_INET else "::"
        destination = _ip(family, found[RTA_DST]) if RTA_DST in found else zero
        gateway = _ip(family, found[RTA_GATEWAY]) if RTA_GATEWAY in found else None
        oif = struct.unpack("=I", found[RTA_OIF])[0] if RTA_OIF in found else 0
        return NetlinkEvent(
            kind="route",
            action="new" if kind == RTM_NEWROUTE else "del",
            index=oif,
            address=f"{destination}/{dst_len}",
            gateway=gateway,
            family=family,
        )
    return None
