"""The sans-I/O protocol core: values in, values out, no sockets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from websockets.frames import Frame, Opcode

from instrumented_server import protocol
from instrumented_server.protocol import (
    COMMAND_TYPES,
    EVENT_LABEL,
    EVENT_TYPES,
    CloseCode,
    Command,
    ErrorCode,
    ProtocolError,
    Recover,
    encode_command,
    encode_message,
    frame_payload,
    parse_command,
    parse_event,
    text_frame,
)
from exporter.catalog import ERROR_REASONS, MESSAGE_TYPES


def command(type_, payload=None, **metadata):
    return json.dumps({"type": type_, "payload": payload or {}, "metadata": metadata})


def test_the_core_has_no_io():
    source = Path(protocol.__file__).read_text()
    for word in ("await ", "import socket", "import asyncio", "open(", "import os"):
        assert word not in source


def test_commands_and_events_do_not_overlap():
    assert not set(COMMAND_TYPES) & set(EVENT_TYPES)
    assert set(EVENT_LABEL) == set(EVENT_TYPES)
    assert set(EVENT_LABEL.values()) <= set(MESSAGE_TYPES)
    assert set(protocol.ERROR_REASON) == set(ErrorCode)
    assert set(protocol.ERROR_REASON.values()) <= set(ERROR_REASONS)


def test_every_close_code_has_a_reason_that_fits_a_close_frame():
    for code in CloseCode:
        if code is CloseCode.ABNORMAL:
            continue  # never sent
        reason = protocol.CLOSE_REASONS[code]
        assert reason and len(reason.encode()) <= 123


@pytest.mark.parametrize("text, code", [
    ("not json", ErrorCode.MALFORMED),
    ("[1, 2]", ErrorCode.MALFORMED),
    ('{"payload": {}}', ErrorCode.MALFORMED),
    ('{"type": 5}', ErrorCode.MALFORMED),
    ('{"type": "ping", "metadata": []}', ErrorCode.MALFORMED),
    ('{"type": "ping", "metadata": {"message_id": 7}}', ErrorCode.MALFORMED),
    ('{"type": "message", "payload": {}}', ErrorCode.UNKNOWN_TYPE),  # an event type is not a command
    ('{"type": "launch"}', ErrorCode.UNKNOWN_TYPE),
    ('{"type": "subscribe", "payload": []}', ErrorCode.INVALID_FIELD),
    ('{"type": "subscribe", "payload": {}}', ErrorCode.INVALID_FIELD),
    ('{"type": "subscribe", "payload": {"channel": "a b"}}', ErrorCode.INVALID_FIELD),
    ('{"type": "subscribe", "payload": {"channel": ""}}', ErrorCode.INVALID_FIELD),
    ('{"type": "subscribe", "payload": {"channel": "x", "recover": {"offset": -1, "epoch": "e"}}}', ErrorCode.INVALID_FIELD),
    ('{"type": "subscribe", "payload": {"channel": "x", "recover": {"offset": true, "epoch": "e"}}}', ErrorCode.INVALID_FIELD),
    ('{"type": "subscribe", "payload": {"channel": "x", "recover": {"offset": 1}}}', ErrorCode.INVALID_FIELD),
    ('{"type": "publish", "payload": {"channel": "x"}}', ErrorCode.INVALID_FIELD),
    ('{"type": "publish", "payload": {"channel": "x", "data": NaN}}', ErrorCode.INVALID_FIELD),
    ('{"type": "connect", "payload": {}}', ErrorCode.INVALID_FIELD),
    ('{"type": "history", "payload": {"channel": "x", "limit": 100000}}', ErrorCode.INVALID_FIELD),
    ('{"type": "history", "payload": {"channel": "x", "since_offset": "3"}}', ErrorCode.INVALID_FIELD),
    ("[" * 100000, ErrorCode.MALFORMED),  # deep nesting: no RecursionError escapes
])
def test_bad_messages_become_errors_not_exceptions(text, code):
    result = parse_command(text)
    assert isinstance(result, ProtocolError)
    assert result.code is code
    assert result.message


def test_a_readable_message_id_comes_back_as_correlation_id():
    result = parse_command(command("subscribe", {"channel": 5}, message_id="m-1"))
    assert isinstance(result, ProtocolError)
    assert result.correlation_id == "m-1"
    assert result.type == "subscribe"


@pytest.mark.parametrize("text, expected", [
    (command("ping", message_id="1"), Command("ping", "1")),
    (command("subscribe", {"channel": "chat:room-1"}), Command("subscribe", None, channel="chat:room-1")),
    (command("subscribe", {"channel": "c", "recover": {"offset": 4, "epoch": "ab"}}, message_id="2"),
     Command("subscribe", "2", channel="c", recover=Recover(4, "ab"))),
    (command("unsubscribe", {"channel": "$secret:x"}), Command("unsubscribe", None, channel="$secret:x")),
    (command("presence", {"channel": "room#alice,bob"}), Command("presence", None, channel="room#alice,bob")),
    (command("history", {"channel": "c", "since_offset": 3, "limit": 10, "epoch": "e"}),
     Command("history", None, channel="c", since_offset=3, epoch="e", limit=10)),
    (command("connect", {"token": "abc"}), Command("connect", None, token="abc")),
])
def test_good_commands(text, expected):
    assert parse_command(text) == expected


def test_publish_data_is_reencoded_compactly_once():
    result = parse_command(command("publish", {"channel": "c", "data": {"b": [1, 2], "é": "ü"}},
                                   traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"))
    assert isinstance(result, Command)
    assert result.data == '{"b":[1,2],"é":"ü"}'.encode()
    assert result.traceparent["traceparent"].startswith("00-")


def test_message_event_splices_the_encoded_data():
    body = encode_message("chat:a", 7, "ep", b'{"x":[1,"\xc3\xa9"]}', {"message_id": "m", "publisher": "u", "secret": "no"}, 123)
    event = parse_event(body)
    assert event == {
        "type": "message",
        "payload": {"channel": "chat:a", "offset": 7, "epoch": "ep", "data": {"x": [1, "é"]}},
        "metadata": {"message_id": "m", "publisher": "u", "timestamp": 123},
    }


def test_client_commands_round_trip_through_the_parser():
    text = encode_command("subscribe", {"channel": "a", "recover": {"offset": 1, "epoch": "e"}}, "id-1")
    assert parse_command(text) == Command("subscribe", "id-1", channel="a", recover=Recover(1, "e"))


def test_parse_event_refuses_commands_and_junk():
    with pytest.raises(ValueError):
        parse_event(encode_command("publish", {"channel": "a", "data": 1}))
    with pytest.raises(ValueError):
        parse_event("{}")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_matches_websockets_own_serialisation(size):
    payload = b"x" * size
    ours = text_frame(payload)
    theirs = Frame(Opcode.TEXT, payload).serialize(mask=False)
    assert ours == theirs
    assert bytes(frame_payload(ours)) == payload


# ------------------------------------------------------------------------- property tests

from hypothesis import given, settings, strategies as st  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(COMMAND_TYPES + EVENT_TYPES + ("", "x")) | JSON,
        "payload": st.fixed_dictionaries({}, optional={
            "channel": st.sampled_from(["room", "$x", "a:b", "a b", "", "x" * 300]) | JSON,
            "data": JSON, "token": JSON, "recover": JSON | st.fixed_dictionaries({"offset": JSON, "epoch": JSON}),
            "since_offset": JSON, "limit": JSON, "epoch": JSON,
        }) | JSON,
        "metadata": st.fixed_dictionaries({}, optional={"message_id": JSON, "traceparent": JSON}) | JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_parses_to_a_command_or_an_error(text):
    result = parse_command(text)
    assert isinstance(result, (Command, ProtocolError))


@settings(max_examples=200, deadline=None)
@given(ENVELOPES)
def test_any_envelope_gives_a_valid_command_or_a_located_error(envelope):
    try:
        text = json.dumps(envelope)
    except ValueError:
        return
    result = parse_command(text)
    if isinstance(result, ProtocolError):
        assert result.message and result.code in ErrorCode
        return
    assert result.type in COMMAND_TYPES
    if result.type not in ("ping", "connect"):
        assert protocol.valid_channel(result.channel)
    if result.type == "publish":
        json.loads(result.data)  # always valid, strict JSON
