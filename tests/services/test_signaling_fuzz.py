"""Property-based tests: whatever arrives, the parser answers with a clear error."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.signaling import (
    MAX_JSON_DEPTH,
    SCHEMAS,
    ErrorCode,
    JSONTooDeep,
    ProtocolError,
    Role,
    loads,
    parse,
    validate,
)

ROLES = st.sampled_from(list(Role))
# No per-example deadline and a long timeout: these check answers, not speed (speed
# is the benchmarks' business), and on a loaded machine 400 examples of hypothesis'
# own bookkeeping can take minutes of wall time.
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(900)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@FAST
@given(st.binary(max_size=2000), ROLES)
def test_arbitrary_bytes_never_crash(data: bytes, role: Role) -> None:
    try:
        parse(data, role)
    except ProtocolError as exc:
        assert exc.code in set(ErrorCode) and exc.message


@FAST
@given(json_values, ROLES)
def test_arbitrary_json_never_crashes(value: Any, role: Role) -> None:
    try:
        message = validate(value, role)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_MESSAGE and exc.message
    else:
        assert (role, message.type) in SCHEMAS


@st.composite
def mutated_messages(draw: st.DrawFn) -> tuple[Role, dict[str, Any]]:
    """A message of a real type whose fields are replaced by arbitrary JSON values."""
    role, mtype = draw(st.sampled_from(sorted(SCHEMAS, key=str)))
    schema = SCHEMAS[(role, mtype)]
    names = list(schema.required) + list(schema.optional)
    obj: dict[str, Any] = {"type": mtype}
    for name in names:
        if draw(st.booleans()):
            obj[name] = draw(json_values)
    if draw(st.booleans()):
        obj[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
    return role, obj


@FAST
@given(mutated_messages())
def test_mutated_messages_are_refused_with_the_field_named(case: tuple[Role, dict]) -> None:
    role, obj = case
    text = json.dumps(obj)
    try:
        parse(text, role)
    except ProtocolError as exc:
        # The message names the type it was checking, so a client can tell what went wrong.
        assert exc.message.startswith(obj["type"]) and exc.code is ErrorCode.BAD_MESSAGE


@FAST
@given(st.text(max_size=300), st.integers(min_value=0, max_value=3))
def test_deeply_nested_or_huge_input_is_bounded(text: str, depth: int) -> None:
    payload = "[" * (depth * 1000) + json.dumps(text) + "]" * (depth * 1000)
    try:
        parse(payload, Role.VIEWER)
    except ProtocolError as exc:
        assert exc.message
    # A RecursionError escaping here would kill the connection's handler: the test fails.


@FAST
@given(json_values)
def test_the_depth_check_accepts_whatever_json_loads_would(value: Any) -> None:
    # The generated values nest at most a few levels: the check must be invisible.
    text = json.dumps(value)
    assert loads(text) == json.loads(text)
    assert loads(text.encode("utf-16")) == json.loads(text.encode("utf-16"))


def test_nesting_is_refused_past_the_limit_and_brackets_in_strings_do_not_count() -> None:
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads(at_limit) == json.loads(at_limit)
    objects = '{"a":' * MAX_JSON_DEPTH + "1" + "}" * MAX_JSON_DEPTH
    assert loads(objects.encode()) == json.loads(objects)
    in_strings = json.dumps(["[{" * 500, '\\"[' * 100, "}]" * 500])
    assert loads(in_strings) == json.loads(in_strings)
    for deep in ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
                 '{"a":[' * 17 + "1" + "]}" * 17,
                 "[[]," * 40 + "1" + "]" * 40,
                 "[" * 60_000):
        with pytest.raises(JSONTooDeep):
            loads(deep)
    with pytest.raises(ProtocolError, match="nested too deeply"):
        parse("[" * 60_000, Role.CAMERA)


def test_deep_input_never_takes_the_interpreter_near_its_recursion_limit() -> None:
    # The parser recurses in C, once per level. Anything the interpreter runs in the
    # middle of it (here a garbage-collector callback, as the rendezvous's metrics
    # install) inherits that depth: at 60,000 levels a Python call there raised
    # RecursionError even though the parser's own error was caught.
    failures: list[BaseException] = []

    def nested(n: int) -> int:
        return 0 if n == 0 else 1 + nested(n - 1)

    def callback(phase: str, info: dict[str, Any]) -> None:
        try:
            nested(100)
        except RecursionError as exc:
            failures.append(exc)

    thresholds = gc.get_threshold()
    gc.callbacks.append(callback)
    gc.set_threshold(1, 1, 1)
    try:
        for text in ("[" * 60_000, '{"a":' * 30_000, "[{" * 30_000):
            with pytest.raises(ProtocolError):
                parse(text, Role.VIEWER)
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(callback)
    assert failures == []
