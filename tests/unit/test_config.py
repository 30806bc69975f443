"""Settings: defaults < TOML file < environment < overrides, validated at load."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from renum_rt import config
from renum_rt.config import DEFAULT_CONFIG, ConfigError, Settings, load, with_changes


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("RENUM_RT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rt.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- defaults


def test_default_file_is_the_repository_one() -> None:
    # from the source tree (an editable install); tests/integration/test_wheel.py checks a wheel
    assert DEFAULT_CONFIG == Path(__file__).resolve().parents[2] / "config" / "renum-rt.toml"
    assert DEFAULT_CONFIG.exists()


def test_load_without_env_equals_builtin_defaults(clean_env: pytest.MonkeyPatch) -> None:
    assert load() == Settings()
    assert load(env={}) == Settings()


def test_default_toml_lists_every_setting_with_its_default() -> None:
    with open(DEFAULT_CONFIG, "rb") as fh:
        table = tomllib.load(fh)
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert set(table) == set(fields)
    defaults = Settings()
    for name, raw in table.items():
        value = getattr(defaults, name)
        expected = tuple(raw) if isinstance(value, tuple) else raw
        assert value == expected and type(value) is type(expected), name


def test_contract_defaults() -> None:
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8765)
    assert (s.rate, s.burst, s.max_frame_bytes, s.max_subscriptions, s.max_connections_per_user) == (
        50.0, 100, 64 * 1024, 100, 20)
    assert s.idle_timeout == 1800.0
    assert (s.admin_claim, s.admin_value) == ("app_metadata.role", "admin")
    assert s.auth_timeout_s == 10.0
    assert s.redis_url == ""


# ---------------------------------------------------------------- environment


def test_env_overrides() -> None:
    s = load(env={
        "RENUM_RT_IDLE_TIMEOUT": "600",
        "RENUM_RT_API_KEY": "k1, k2,,k3 ",
        "RENUM_RT_JWT_SECRET": "sekrit",
        "RENUM_RT_PORT": " 9000 ",
        "RENUM_RT_ALLOWED_ORIGINS": "https://a.example,https://b.example/",
        "RENUM_RT_ADMIN_CLAIM": "role",
        "RENUM_RT_UNRELATED": "ignored",
        "IDLE_TIMEOUT": "1",
    })
    assert s.idle_timeout == 600.0 and isinstance(s.idle_timeout, float)
    assert s.api_key == ("k1", "k2", "k3")
    assert s.jwt_secret == "sekrit"
    assert s.port == 9000
    assert s.allowed_origins == ("https://a.example", "https://b.example/")
    assert s.admin_claim == "role"
    assert s == with_changes(Settings(), idle_timeout=600.0, api_key=("k1", "k2", "k3"), jwt_secret="sekrit",
                             port=9000, allowed_origins=("https://a.example", "https://b.example/"),
                             admin_claim="role")


def test_single_api_key_and_empty_list() -> None:
    assert load(env={"RENUM_RT_API_KEY": "only"}).api_key == ("only",)
    assert load(env={"RENUM_RT_API_KEY": ""}).api_key == ()


def test_load_reads_os_environ(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RENUM_RT_IDLE_TIMEOUT", "42")
    assert load().idle_timeout == 42.0


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "idle_timeout = 100.0\nport = 1111\nrate = 5.0\n")
    s = load(path, env={"RENUM_RT_PORT": "2222", "RENUM_RT_RATE": "6"}, rate=7.0, host=None)
    assert (s.idle_timeout, s.port, s.rate, s.host) == (100.0, 2222, 7.0, "127.0.0.1")


# ---------------------------------------------------------------- TOML file


def test_toml_file_via_path(tmp_path: Path) -> None:
    path = write(tmp_path, 'api_key = ["a", "b"]\nidle_timeout = 60\nlog_level = "debug"\n'
                           'allowed_origins = ["https://x.example"]\n')
    s = load(path, env={})
    assert s.api_key == ("a", "b")
    assert s.idle_timeout == 60.0 and isinstance(s.idle_timeout, float)
    assert s.log_level == "debug"
    assert s.allowed_origins == ("https://x.example",)
    # everything else keeps its default
    assert with_changes(s, api_key=(), idle_timeout=1800.0, log_level="info", allowed_origins=()) == Settings()


def test_toml_string_list_may_be_comma_separated(tmp_path: Path) -> None:
    assert load(write(tmp_path, 'api_key = "a, b"\n'), env={}).api_key == ("a", "b")


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "idle_timout = 5\n"), env={})
    assert "idle_timout" in str(info.value)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError):
        load(write(tmp_path, "port = = 1\n"), env={})


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "name, raw",
    [
        ("IDLE_TIMEOUT", "soon"),
        ("PORT", "80.5"),
        ("PORT", "http"),
        ("BURST", ""),
        ("RATE", "fast"),
        ("MAX_FRAME_BYTES", "64k"),
    ],
)
def test_bad_env_value_names_the_key(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={f"RENUM_RT_{name}": raw})
    assert name.lower() in str(info.value)
    assert f"RENUM_RT_{name}" in str(info.value)


@pytest.mark.parametrize(
    "line, key",
    [
        ("host = 5", "host"),
        ("port = true", "port"),
        ("rate = false", "rate"),
        ("idle_timeout = \"x\"", "idle_timeout"),
        ("api_key = 5", "api_key"),
        ("log_level = 3", "log_level"),
        ("port = [1]", "port"),
    ],
)
def test_bad_toml_value_names_the_key(tmp_path: Path, line: str, key: str) -> None:
    path = write(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert repr(key) in str(info.value)


@pytest.mark.parametrize(
    "name, raw",
    [
        ("rate", "0"), ("burst", "-1"), ("idle_timeout", "0"), ("max_frame_bytes", "0"), ("port", "-5"),
        ("max_subscriptions", "0"), ("flood_close_after", "0"), ("auth_timeout_s", "-1"),
    ],
)
def test_non_positive_values_are_refused(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={f"RENUM_RT_{name.upper()}": raw})
    assert repr(name) in str(info.value)


def test_cross_checks() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"RENUM_RT_MAX_FRAME_BYTES": "2000", "RENUM_RT_HARD_FRAME_BYTES": "1000"})
    assert "hard_frame_bytes" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load(env={"RENUM_RT_LOG_LEVEL": "verbose"})
    assert "log_level" in str(info.value)
    assert load(env={"RENUM_RT_LOG_LEVEL": "DEBUG"}).log_level == "DEBUG"
    with pytest.raises(ConfigError) as info:
        load(env={"RENUM_RT_JWT_PUBLIC_KEY": "pem", "RENUM_RT_JWKS_URL": "https://x"})
    assert "RENUM_RT_JWKS_URL" in str(info.value)


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError):
        load(env={}, port=0)


@pytest.mark.parametrize("name", ["IDLE_TIMEOUT", "RATE", "AUTH_TIMEOUT_S"])
def test_nan_is_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={f"RENUM_RT_{name}": "nan"})
    assert name.lower() in str(info.value)


def test_toml_float_for_int_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "burst = 1.5\n"), env={})
    assert "'burst'" in str(info.value)


# ---------------------------------------------------------------- derived values


def test_origin_allowed_default_is_same_origin_on_an_address() -> None:
    s = Settings()
    assert s.origin_allowed("http://127.0.0.1:9000", "127.0.0.1:9000")
    assert s.origin_allowed("https://10.1.2.3/", "10.1.2.3")
    assert s.origin_allowed("http://[::1]:8765", "[::1]:8765")
    assert s.origin_allowed("http://localhost:8765", "localhost:8765")
    assert not s.origin_allowed("https://evil.example", "10.1.2.3")
    assert not s.origin_allowed("null", "10.1.2.3")
    assert not s.origin_allowed("file://10.1.2.3", "10.1.2.3")


def test_a_host_header_naming_a_domain_proves_nothing_without_public_origin() -> None:
    # a DNS-rebinding page sends its own domain as Origin and as Host
    assert not Settings().origin_allowed("http://rt.example:9000", "rt.example:9000")
    assert Settings(public_origin="http://rt.example:9000").origin_allowed("http://rt.example:9000", "x")


def test_origin_allowed_public_origin_and_explicit_list() -> None:
    public = Settings(public_origin="https://rt.example/")
    assert public.origin_allowed("https://rt.example", "internal:8765")
    assert not public.origin_allowed("http://internal:8765", "internal:8765")
    explicit = Settings(allowed_origins=("https://a.example/", "https://b.example"), public_origin="https://rt.example")
    assert explicit.origin_allowed("https://a.example", "x") and explicit.origin_allowed("https://B.example/", "x")
    assert not explicit.origin_allowed("https://rt.example", "rt.example")


@pytest.mark.parametrize(
    "timeout, sweep",
    [(1800.0, 60.0), (600.0, 60.0), (601.0, 60.0), (300.0, 30.0), (10.0, 1.0), (1.0, 0.1)],
)
def test_idle_sweep_is_a_tenth_of_the_timeout_at_most_60s(timeout: float, sweep: float) -> None:
    assert Settings(idle_timeout=timeout).idle_sweep_s() == pytest.approx(sweep)


def test_idle_sweep_has_a_floor() -> None:
    assert Settings(idle_timeout=0.01).idle_sweep_s() == 0.05


def test_with_changes_copies() -> None:
    base = Settings()
    changed = with_changes(base, rate=1.0)
    assert changed.rate == 1.0 and base.rate == 50.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.rate = 2.0  # type: ignore[misc]


def test_exports() -> None:
    assert set(config.__all__) == {"ConfigError", "Settings", "load", "with_changes"}


# ---------------------------------------------------------------- HTTP connections


def test_http_connection_defaults() -> None:
    s = Settings()
    assert (s.http_header_timeout_s, s.http_body_timeout_s, s.trusted_proxies) == (10.0, 30.0, ())


def test_trusted_proxies_from_env_and_toml(tmp_path: Path) -> None:
    assert load(env={"RENUM_RT_TRUSTED_PROXIES": "10.0.0.1, 10.1.0.0/16,fd00::/8"}).trusted_proxies == (
        "10.0.0.1", "10.1.0.0/16", "fd00::/8")
    from_file = load(write(tmp_path, 'trusted_proxies = ["192.168.0.0/24"]\n'), env={})
    assert from_file.trusted_proxies == ("192.168.0.0/24",)


@pytest.mark.parametrize("raw", ["proxy.internal", "10.0.0.0/33", "10.0.0.1,nope"])
def test_bad_trusted_proxy_is_refused_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"RENUM_RT_TRUSTED_PROXIES": raw})
    assert "trusted_proxies" in str(info.value)


@pytest.mark.parametrize("name", ["http_header_timeout_s", "http_body_timeout_s"])
@pytest.mark.parametrize("raw", ["0", "-1", "nan"])
def test_http_timeouts_must_be_positive(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={f"RENUM_RT_{name.upper()}": raw})
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost:5173", True), ("http://127.0.0.1:3000", True), ("https://localhost", True),
    ("http://[::1]:8080", True), ("http://evil.example", False), ("http://localhost.evil.example:80", False),
    ("file://localhost", False),
])
def test_dev_mode_lets_pages_from_any_local_origin_connect(origin: str, allowed: bool) -> None:
    assert Settings(dev=True).origin_allowed(origin, "127.0.0.1:8765") is allowed
    assert Settings().origin_allowed(origin, "127.0.0.1:8765") is False  # never outside dev mode


def test_dev_is_a_boolean_setting_from_the_environment() -> None:
    assert load(env={"RENUM_RT_DEV": "true"}).dev is True
    with pytest.raises(ConfigError):
        load(env={"RENUM_RT_DEV": "maybe"})
