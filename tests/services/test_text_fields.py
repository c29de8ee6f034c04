"""Every string in every message is Unicode scalar text without NUL, or refused by name.

A lone UTF-16 surrogate (JSON ``"\\ud800"``) decodes to a Python string that
cannot be encoded to UTF-8: had it passed the schema it would blow up whoever
encodes it later (the camera building a signed statement, a log file, aiortc).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.signaling import ErrorCode, ProtocolError, Role, parse, validate
from services.signatures import pair_statement
from tests.services.messages import TYPES, legal, path_text, replaced, string_paths

CASES = [
    (role, mtype, path)
    for role, mtype in TYPES
    for path in string_paths({k: v for k, v in legal(role, mtype).items() if k != "type"})
]


def spoiled(text: str, bad: str) -> str:
    middle = len(text) // 2
    return text[:middle] + bad + text[middle:]


def test_every_legal_example_passes() -> None:
    for role, mtype in TYPES:
        obj = legal(role, mtype)
        assert validate(obj, role).type == mtype
        assert parse(json.dumps(obj), role).type == mtype


@pytest.mark.parametrize(("role", "mtype", "path"), CASES,
                         ids=[f"{r}-{m}-{path_text(p)}" for r, m, p in CASES])
@pytest.mark.parametrize("bad", ["\ud800", "\udfff", "\udc80\ud800"])
def test_a_lone_surrogate_anywhere_is_refused_naming_the_field(
    role: Role, mtype: str, path: tuple[Any, ...], bad: str
) -> None:
    obj = legal(role, mtype)
    target: Any = obj
    for key in path:
        target = target[key]
    obj = replaced(obj, path, spoiled(target, bad))
    wire = json.dumps(obj)  # ensure_ascii: the surrogate travels as \ud800
    assert "\\ud" in wire
    with pytest.raises(ProtocolError) as caught:
        parse(wire, role)
    assert caught.value.code is ErrorCode.BAD_MESSAGE
    assert caught.value.message == (
        f"{mtype}: {path_text(path)}: not valid Unicode text (a lone surrogate)"
    )
    caught.value.message.encode("utf-8")  # the error itself is sendable and loggable


@pytest.mark.parametrize(("role", "mtype", "path"), CASES,
                         ids=[f"{r}-{m}-{path_text(p)}" for r, m, p in CASES])
def test_nul_in_any_string_is_refused_naming_the_field(
    role: Role, mtype: str, path: tuple[Any, ...]
) -> None:
    obj = legal(role, mtype)
    target: Any = obj
    for key in path:
        target = target[key]
    with pytest.raises(ProtocolError) as caught:
        parse(json.dumps(replaced(obj, path, spoiled(target, "\x00"))), role)
    assert caught.value.message.startswith(f"{mtype}: {path[0]}")


def test_a_valid_astral_character_is_text_not_a_surrogate() -> None:
    """An escaped surrogate pair is one real character: a name may hold it."""
    obj = legal(Role.VIEWER, "pair")
    wire = json.dumps(obj).replace("kitchen tablet", "kitchen \\ud83d\\udcf7")
    message = parse(wire, Role.VIEWER)
    assert message["name"] == "kitchen \U0001f4f7"
    pair_statement("D", "s", 1, "k", message["name"])  # encodes to UTF-8


@pytest.mark.parametrize("role", list(Role))
def test_the_type_and_unknown_keys_may_hold_surrogates_without_harm(role: Role) -> None:
    with pytest.raises(ProtocolError, match="type: not valid Unicode"):
        parse('{"type": "offer\\ud800"}', role)
    obj = {**legal(Role.VIEWER, "bye"), "\ud800": 1}
    with pytest.raises(ProtocolError) as caught:
        parse(json.dumps(obj), Role.VIEWER)
    caught.value.message.encode("utf-8")


def test_sixty_thousand_levels_of_nesting_in_a_field_do_not_recurse() -> None:
    """``validate`` on a value a caller built (json.loads stops far earlier)."""
    deep: Any = "\ud800"
    for _ in range(60_000):
        deep = [deep]
    obj = {**legal(Role.SERVER, "hello"), "ice_servers": deep}
    with pytest.raises(ProtocolError, match="ice_servers"):
        validate(obj, Role.SERVER)
    obj["ice_servers"] = [{"urls": deep}]
    with pytest.raises(ProtocolError, match="ice_servers"):
        validate(obj, Role.SERVER)
