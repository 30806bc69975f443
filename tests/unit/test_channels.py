"""Channel names and who may receive them."""

from __future__ import annotations

from typing import Any

import pytest

from renum_rt import channels
from renum_rt.channels import ChannelError, Identity

USER = Identity("u1", teams=frozenset({"t1"}), executions=frozenset({"e7"}))
ADMIN = Identity("boss", is_admin=True)


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("system", ("system", None)),
        ("admin", ("admin", None)),
        ("user:u1", ("user", "u1")),
        ("user:0c6f7a1e-5b1c-4d1f-9f7e-2c9a4b3e8d10", ("user", "0c6f7a1e-5b1c-4d1f-9f7e-2c9a4b3e8d10")),
        ("user:auth0|abc123", ("user", "auth0|abc123")),
        ("user:jane.doe@example.com", ("user", "jane.doe@example.com")),
        ("team:t_1+x=y", ("team", "t_1+x=y")),
        ("execution:42", ("execution", "42")),
        ("execution:" + "x" * 128, ("execution", "x" * 128)),
    ],
)
def test_parse_valid(name: str, parsed: tuple[str, str | None]) -> None:
    assert channels.parse(name) == parsed


@pytest.mark.parametrize(
    "name",
    [
        "", "user:", "user", "team:", "execution:", "user:" + "x" * 129, "user:a b", "user:a:b", "user:a/b",
        "user:é", "user:a\n", "system\n", " system", "System", "ADMIN", "admin:x", "system:x",
        "org:1", "notifications:u1", "user:u1 ", ":u1", "user::u1", "user:a\x00",
    ],
)
def test_parse_invalid(name: str) -> None:
    with pytest.raises(ChannelError) as info:
        channels.parse(name)
    assert info.value.code == "bad_request"
    assert info.value.message == str(info.value)


@pytest.mark.parametrize("value", [None, 5, b"system", ["system"], {"channel": "system"}])
def test_parse_non_string(value: Any) -> None:
    with pytest.raises(ChannelError) as info:
        channels.parse(value)
    assert info.value.code == "bad_request"


def test_parse_error_message_is_bounded() -> None:
    with pytest.raises(ChannelError) as info:
        channels.parse("z" * 10_000)
    assert len(info.value.message) < 300


def test_user_channel() -> None:
    assert channels.user_channel("u1") == "user:u1"
    assert channels.parse(channels.user_channel("u1")) == ("user", "u1")


# ---------------------------------------------------------------- check_subscribe


@pytest.mark.parametrize(
    "identity, channel, grant",
    [
        (USER, "user:u1", None),
        (USER, "system", None),
        (USER, "team:t1", None),
        (USER, "execution:e7", None),
        (USER, "execution:e1", {"sub": "u1", "channel": "execution:e1"}),
        (USER, "team:t9", {"sub": "u1", "channel": "team:t9", "exp": 1}),
        # a grant for something else does not take away what the claims allow
        (USER, "team:t1", {"sub": "u1", "channel": "team:t2"}),
        (USER, "user:u1", {"sub": "u2", "channel": "user:u2"}),
        (ADMIN, "admin", None),
        (ADMIN, "system", None),
        (ADMIN, "user:boss", None),
    ],
)
def test_check_subscribe_allowed(identity: Identity, channel: str, grant: dict[str, Any] | None) -> None:
    assert channels.check_subscribe(identity, channel, grant) == channel


@pytest.mark.parametrize(
    "identity, channel, grant",
    [
        (USER, "user:u2", None),
        (USER, "team:t2", None),
        (USER, "execution:e1", None),
        (USER, "admin", None),
        (USER, "admin", {"sub": "u1", "channel": "admin"}),  # no grant opens admin
        (USER, "execution:e1", {"sub": "u2", "channel": "execution:e1"}),  # grant for another user
        (USER, "execution:e1", {"sub": "u1", "channel": "execution:e2"}),  # grant for another channel
        (USER, "execution:e1", {"sub": "u1", "channel": "team:e1"}),
        (USER, "execution:e1", {"sub": "u1"}),
        (USER, "execution:e1", {}),
        (ADMIN, "user:u1", None),  # admins do not read other users' channels
        (ADMIN, "team:t1", None),
    ],
)
def test_check_subscribe_forbidden(identity: Identity, channel: str, grant: dict[str, Any] | None) -> None:
    with pytest.raises(ChannelError) as info:
        channels.check_subscribe(identity, channel, grant)
    assert info.value.code == "forbidden"


def test_check_subscribe_forbidden_messages_say_why() -> None:
    with pytest.raises(ChannelError) as info:
        channels.check_subscribe(USER, "execution:e1", {"sub": "u2", "channel": "execution:e1"})
    assert "another channel or user" in info.value.message
    with pytest.raises(ChannelError) as info:
        channels.check_subscribe(USER, "execution:e1")
    assert "subscription token" in info.value.message


def test_grant_does_not_open_another_users_channel() -> None:
    # contract: user:<user_id> is for "that user only"; grants are for team/execution channels
    with pytest.raises(ChannelError) as info:
        channels.check_subscribe(USER, "user:u2", {"sub": "u1", "channel": "user:u2"})
    assert info.value.code == "forbidden"


@pytest.mark.parametrize("channel", ["bogus", "user:", 7, None])
def test_check_subscribe_malformed_is_bad_request(channel: Any) -> None:
    with pytest.raises(ChannelError) as info:
        channels.check_subscribe(USER, channel, None)
    assert info.value.code == "bad_request"


# ---------------------------------------------------------------- publishing and storage


@pytest.mark.parametrize("channel", ["system", "user:u1", "team:t1", "execution:e1"])
def test_check_publishable(channel: str) -> None:
    assert channels.check_publishable(channel) == channel


@pytest.mark.parametrize("channel, code", [("admin", "bad_request"), ("nope", "bad_request"), (None, "bad_request"),
                                           ("user:", "bad_request")])
def test_check_publishable_refuses(channel: Any, code: str) -> None:
    with pytest.raises(ChannelError) as info:
        channels.check_publishable(channel)
    assert info.value.code == code


@pytest.mark.parametrize(
    "channel, durable, latest, stored",
    [
        ("user:u1", True, False, True),
        ("system", False, False, True),
        ("team:t1", False, False, True),
        ("execution:e1", False, True, True),
        ("admin", False, False, False),
    ],
)
def test_storage_rules(channel: str, durable: bool, latest: bool, stored: bool) -> None:
    assert channels.is_durable(channel) is durable
    assert channels.keeps_latest(channel) is latest
    assert channels.is_stored(channel) is stored
