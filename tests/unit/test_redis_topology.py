"""Pure parts of the Redis engine's topologies: what a URL names, and how a group of
publishes becomes script calls (one, or one per hash slot on a cluster)."""

from __future__ import annotations

import pytest

from renum_rt.config import ConfigError, Settings, load
from renum_rt.engines.base import Publication
from renum_rt.engines.redis_connect import BadRedisURL, Topology, parse
from renum_rt.engines.redis_publish import plan


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", Topology("single", "redis://127.0.0.1:6379/0")),
    ("rediss://h:6380", Topology("single", "rediss://h:6380")),
    ("redis+sentinel://s1:26379,s2:26380/renum", Topology(
        "sentinel", "redis+sentinel://s1:26379,s2:26380/renum", (("s1", 26379), ("s2", 26380)), "renum")),
    ("redis+sentinel://u:p%40ss@s1:26379/main/2", Topology(
        "sentinel", "redis+sentinel://u:p%40ss@s1:26379/main/2", (("s1", 26379),), "main", "u", "p@ss", 2)),
    ("redis+cluster://n1:7000,n2:7001", Topology(
        "cluster", "redis+cluster://n1:7000,n2:7001", (("n1", 7000), ("n2", 7001)))),
    ("redis+cluster://:secret@[::1]:7000", Topology(
        "cluster", "redis+cluster://:secret@[::1]:7000", (("::1", 7000),), password="secret")),
])
def test_a_url_names_its_topology(url: str, expected: Topology) -> None:
    assert parse(url) == expected


@pytest.mark.parametrize("url, why", [
    ("localhost:6379", "not a URL"),
    ("http://h:1", "unknown scheme"),
    ("redis+cluster://n1", "host:port"),
    ("redis+cluster://n1:7000/0", "no path"),
    ("redis+sentinel://s1:26379", "primary name"),
    ("redis+sentinel://s1:26379/main/x", "primary name"),
    ("redis+sentinel://s1:port/main", "host:port"),
])
def test_a_bad_url_is_refused_with_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(BadRedisURL, match=why):
        parse(url)


def test_the_settings_refuse_a_bad_url_and_wait_replicas_on_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_RT_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("RENUM_RT_REDIS_URL", "redis+cluster://n1")
    with pytest.raises(ConfigError, match="redis_url.*host:port"):
        load()
    monkeypatch.setenv("RENUM_RT_REDIS_URL", "redis+cluster://n1:7000")
    monkeypatch.setenv("RENUM_RT_REDIS_WAIT_REPLICAS", "1")
    with pytest.raises(ConfigError, match="redis_wait_replicas"):
        load()
    monkeypatch.setenv("RENUM_RT_REDIS_URL", "redis+sentinel://s1:26379/main")
    settings: Settings = load()
    assert settings.redis_wait_replicas == 1


def key(kind: str, name: str) -> str:
    return f"p:{kind}:{{{name}}}"


def test_one_primary_stores_a_group_in_one_call() -> None:
    items = [Publication(["team:a", "user:u1"], "n", {}, 1, "k1"), Publication(["admin"], "n", {}, 2)]
    (call,) = plan(items, key, None)
    assert call.parts == [(0, ["team:a", "user:u1"]), (1, ["admin"])]
    assert call.keys == ["p:s:{team:a}", "p:s:{user:u1}", "p:pub:{k1}", "p:id:{admin}"]
    assert not call.keyed  # the second item has no key: the call may not be retried


def test_a_cluster_splits_a_group_by_slot_with_an_answer_key_per_part() -> None:
    slots = {"team:a": 1, "user:u1": 2, "user:u2": 1, "execution:e": 2}
    items = [Publication(["team:a", "user:u1", "user:u2"], "n", {}, 1, "k1"),
             Publication(["execution:e"], "n", {}, 2, "k2")]
    first, second = plan(items, key, slots.__getitem__)
    assert first.parts == [(0, ["team:a", "user:u2"])]
    assert first.keys == ["p:s:{team:a}", "p:s:{user:u2}", "p:pub:{team:a}:k1"]
    assert second.parts == [(0, ["user:u1"]), (1, ["execution:e"])]
    assert second.keys == ["p:s:{user:u1}", "p:pub:{user:u1}:k1",
                           "p:s:{execution:e}", "p:latest:{execution:e}", "p:pub:{execution:e}:k2"]
    assert first.keyed and second.keyed
