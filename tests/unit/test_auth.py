"""JWT verification: what is accepted, what is refused and why, JWKS rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from renum_rt import channels
from renum_rt.auth import (
    JWKS_MIN_REFETCH_S,
    Authenticator,
    AuthError,
    TokenVerifier,
    UnknownKeyId,
    claim_at,
    issue_token,
)
from renum_rt.channels import Identity
from renum_rt.config import Settings

SECRET = "s" * 64
JWKS_URL = "https://idp.example/.well-known/jwks.json"


# ---------------------------------------------------------------- helpers


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    """Claims of a valid user token, with ``changes`` (``...`` removes a claim)."""
    now = int(time.time())
    out: dict[str, Any] = {"sub": "u1", "iat": now, "exp": now + 3600}
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def hs(payload: dict[str, Any], key: str = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def hand_signed_hs256(payload: dict[str, Any], key: bytes, header: dict[str, Any] | None = None) -> str:
    """An HS256 token signed by hand (PyJWT refuses to use a PEM key as an HMAC secret)."""
    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signing_input = f"{head}.{body}".encode()
    return f"{head}.{body}." + b64(hmac.new(key, signing_input, hashlib.sha256).digest())


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{head}.{b64(json.dumps(payload).encode())}."


def verifier(**settings: Any) -> TokenVerifier:
    settings.setdefault("jwt_secret", SECRET)
    return TokenVerifier(Settings(**settings))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private: Any) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def rsa_jwk(private: rsa.RSAPrivateKey, kid: str, alg: str = "RS256") -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def ec_jwk(private: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


# ---------------------------------------------------------------- accepted tokens


def test_valid_hs256_token_gives_identity() -> None:
    payload = claims(teams=["t1", "t2", 7], executions=["e1"])
    identity = verifier().identity(hs(payload))
    assert identity == Identity(
        user_id="u1",
        exp=float(payload["exp"]),
        is_admin=False,
        teams=frozenset({"t1", "t2", "7"}),
        executions=frozenset({"e1"}),
    )


def test_issue_token_is_accepted() -> None:
    identity = verifier().identity(issue_token(SECRET, "u9", 60, teams=["t"]))
    assert identity.user_id == "u9" and identity.teams == frozenset({"t"})


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_accepted(alg: str) -> None:
    assert verifier().identity(hs(claims(), alg=alg)).user_id == "u1"


def test_teams_and_executions_that_are_not_lists_are_empty() -> None:
    identity = verifier().identity(hs(claims(teams="t1", executions={"e1": True})))
    assert identity.teams == frozenset() and identity.executions == frozenset()


@pytest.mark.parametrize(
    "extra, is_admin",
    [
        ({"app_metadata": {"role": "admin"}}, True),
        ({"app_metadata": {"role": ["user", "admin"]}}, True),
        ({"app_metadata": {"role": "user"}}, False),
        ({"app_metadata": {"role": ["user"]}}, False),
        ({"app_metadata": {"role": "administrator"}}, False),
        ({"app_metadata": "admin"}, False),
        ({"role": "admin"}, False),
        ({}, False),
    ],
)
def test_admin_by_dotted_claim_path(extra: dict[str, Any], is_admin: bool) -> None:
    assert verifier().identity(hs(claims(**extra))).is_admin is is_admin


def test_admin_claim_path_and_value_are_configurable() -> None:
    v = verifier(admin_claim="realm.roles", admin_value="ops")
    assert v.identity(hs(claims(realm={"roles": ["dev", "ops"]}))).is_admin is True
    assert v.identity(hs(claims(realm={"roles": ["dev"]}))).is_admin is False
    assert v.identity(hs(claims(app_metadata={"role": "admin"}))).is_admin is False


def test_claim_at() -> None:
    data = {"a": {"b": {"c": 1}}, "x": [1]}
    assert claim_at(data, "a.b.c") == 1
    assert claim_at(data, "a.b") == {"c": 1}
    assert claim_at(data, "a.z.c") is None
    assert claim_at(data, "x.y") is None


# ---------------------------------------------------------------- the refusal matrix


def _refused(v: TokenVerifier, token: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.identity(token)
    return info.value


def test_alg_none_is_refused() -> None:
    v = verifier()
    for alg in ("none", "None", "NONE"):
        token = unsigned(claims(), alg)
        err = _refused(v, token)
        assert "not accepted" in str(err)
        # even with a signature appended
        _refused(v, token + b64(b"sig"))


def test_pyjwt_made_none_token_is_refused() -> None:
    _refused(verifier(), jwt.encode(claims(), None, algorithm="none"))


def test_bad_signature_is_refused() -> None:
    err = _refused(verifier(), hs(claims(), key="t" * 32))
    assert "signature" in str(err)


def test_tampered_payload_is_refused() -> None:
    token = hs(claims())
    head, _, sig = token.split(".")
    forged = f"{head}.{b64(json.dumps(claims(sub='admin-user')).encode())}.{sig}"
    _refused(verifier(), forged)


def test_expired_beyond_leeway_is_refused_within_leeway_accepted() -> None:
    v = verifier(jwt_leeway_s=30)
    now = int(time.time())
    assert v.identity(hs(claims(exp=now - 10))).user_id == "u1"
    err = _refused(v, hs(claims(exp=now - 120)))
    assert "expired" in str(err)
    strict = verifier(jwt_leeway_s=0)
    _refused(strict, hs(claims(exp=now - 10)))


def test_not_yet_valid_token_is_refused() -> None:
    now = int(time.time())
    _refused(verifier(jwt_leeway_s=30), hs(claims(nbf=now + 3600)))


@pytest.mark.parametrize("missing", ["sub", "exp"])
def test_missing_required_claim_is_refused(missing: str) -> None:
    err = _refused(verifier(), hs(claims(**{missing: ...})))
    assert missing in str(err)


@pytest.mark.parametrize("sub", [123, None, "", ["u1"], {"id": "u1"}, "x" * 129])
def test_sub_must_be_a_non_empty_string(sub: Any) -> None:
    _refused(verifier(), hs(claims(sub=sub)))


def test_sub_of_128_characters_is_accepted() -> None:
    assert verifier().identity(hs(claims(sub="x" * 128))).user_id == "x" * 128


@pytest.mark.parametrize("sub", ["a b", "a:b", "ü"])
def test_accepted_sub_always_names_a_valid_user_channel(sub: str) -> None:
    try:
        identity = verifier().identity(hs(claims(sub=sub)))
    except AuthError:
        return  # refusing such a token is a fix too
    channels.parse(channels.user_channel(identity.user_id))


def test_audience() -> None:
    v = verifier(jwt_audience="authenticated")
    assert v.identity(hs(claims(aud="authenticated"))).user_id == "u1"
    assert v.identity(hs(claims(aud=["other", "authenticated"]))).user_id == "u1"
    assert "audience" in str(_refused(v, hs(claims(aud="anon"))))
    assert "aud" in str(_refused(v, hs(claims())))
    # no audience configured: aud is not checked
    assert verifier().identity(hs(claims(aud="whatever"))).user_id == "u1"


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJIUzI1NiJ9.e30", "é.é.é",
     b64(b"[1,2]") + ".e30.x", b64(b'"alg"') + ".e30.x"],
)
def test_garbage_token_is_refused(token: str) -> None:
    _refused(verifier(), token)


@pytest.mark.parametrize("token", ["", None, 42, b"bytes"])
def test_empty_or_non_string_token_is_refused(token: Any) -> None:
    assert "missing" in str(_refused(verifier(), token))


@pytest.mark.parametrize("token", ["\ud800", "eyJhbGciOiJIUzI1NiJ9.\ud800.x"])
def test_token_with_lone_surrogate_is_refused_with_auth_error(token: str) -> None:
    # reachable: {"type":"auth","token":"\ud800"} is valid JSON and parses to this str
    with pytest.raises(AuthError):
        verifier().identity(token)


def test_hs_rs_key_confusion_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = public_pem(rsa_key)
    v = verifier(jwt_secret="", jwt_public_key=pem)
    forged = hand_signed_hs256(claims(), pem.encode())
    _refused(v, forged)
    # the same forgery with the PEM's exact bytes stripped of its trailing newline
    _refused(v, hand_signed_hs256(claims(), pem.strip().encode()))


def test_rs256_token_refused_by_hmac_only_server(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    _refused(verifier(), token)


def test_rs256_with_pem_public_key(rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    v = verifier(jwt_secret="", jwt_public_key=public_pem(rsa_key))
    assert v.identity(jwt.encode(claims(), rsa_key, algorithm="RS256")).user_id == "u1"
    assert v.identity(jwt.encode(claims(), rsa_key, algorithm="RS512")).user_id == "u1"
    _refused(v, jwt.encode(claims(), rsa_key2, algorithm="RS256"))
    # an HS256 token is refused when the server holds no secret
    _refused(v, hs(claims()))


def test_es256_with_pem_public_key(ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    v = verifier(jwt_secret="", jwt_public_key=public_pem(ec_key))
    assert v.identity(jwt.encode(claims(), ec_key, algorithm="ES256")).user_id == "u1"
    other = ec.generate_private_key(ec.SECP256R1())
    _refused(v, jwt.encode(claims(), other, algorithm="ES256"))
    # an RS256 token against an EC key: refused, not a crash
    _refused(v, jwt.encode(claims(), rsa_key, algorithm="RS256"))


def test_no_key_configured_raises_auth_error() -> None:
    with pytest.raises(AuthError) as info:
        TokenVerifier(Settings())
    assert "RENUM_RT_JWT_SECRET" in str(info.value)


def test_grant_requires_channel() -> None:
    v = verifier()
    grant = v.grant(hs(claims(channel="execution:e1")))
    assert grant["channel"] == "execution:e1" and grant["sub"] == "u1"
    err = _refused_grant(v, hs(claims()))
    assert "channel" in str(err)
    _refused_grant(v, hs(claims(channel="execution:e1", exp=...)))
    _refused_grant(v, hs(claims(channel="execution:e1"), key="t" * 32))


def test_a_subscription_token_never_opens_a_session() -> None:
    v = verifier()
    with pytest.raises(AuthError) as info:
        v.identity(hs(claims(channel="execution:e1")))
    assert "subscription token" in str(info.value)


def _refused_grant(v: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.grant(token)
    return info.value


def test_auth_error_messages_never_contain_the_token(rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    cases = [
        (verifier(), unsigned(claims())),
        (verifier(), hs(claims(), key="t" * 32)),
        (verifier(), hs(claims(exp=now - 3600))),
        (verifier(), hs(claims(sub=...))),
        (verifier(), hs(claims(exp=...))),
        (verifier(), hs(claims(sub=5))),
        (verifier(jwt_audience="authenticated"), hs(claims(aud="x"))),
        (verifier(jwt_audience="authenticated"), hs(claims())),
        (verifier(), "garbage-token-value-1234567890"),
        (verifier(jwt_secret="", jwt_public_key=public_pem(rsa_key)),
         hand_signed_hs256(claims(), public_pem(rsa_key).encode())),
        (verifier(), jwt.encode(claims(), rsa_key, algorithm="RS256")),
    ]
    for v, token in cases:
        message = str(_refused(v, token))
        assert token not in message
        for part in token.split("."):
            if len(part) >= 12:
                assert part not in message, (message, part)


# ---------------------------------------------------------------- JWKS


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeJwks:
    """An async JWKS fetcher returning ``document``; counts calls; can fail."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.document: dict[str, Any] = {"keys": list(keys)}
        self.calls = 0
        self.fail: Exception | None = None

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return json.loads(json.dumps(self.document))


def jwks_auth(fetch: FakeJwks, clock: FakeClock, max_age_s: float = 600.0, **settings: Any) -> Authenticator:
    v = TokenVerifier(Settings(jwks_url=JWKS_URL, **settings))
    return Authenticator(v, fetch, max_age_s=max_age_s, clock=clock)


def rs(private: Any, kid: str | None, alg: str = "RS256", **changes: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**changes), private, algorithm=alg, headers=headers)


@pytest.mark.gen_test
async def test_jwks_first_token_loads_keys_once(io_loop: Any, rsa_key: rsa.RSAPrivateKey,
                                                ec_key: ec.EllipticCurvePrivateKey) -> None:
    fetch, clock = FakeJwks(rsa_jwk(rsa_key, "k1"), ec_jwk(ec_key, "e1")), FakeClock()
    auth = jwks_auth(fetch, clock)
    assert (await auth.identity(rs(rsa_key, "k1"))).user_id == "u1"
    assert (await auth.identity(rs(ec_key, "e1", "ES256"))).user_id == "u1"
    assert fetch.calls == 1
    grant = await auth.grant(rs(rsa_key, "k1", channel="team:t1"))
    assert grant["channel"] == "team:t1" and fetch.calls == 1


@pytest.mark.gen_test
async def test_jwks_unknown_kid_triggers_one_fetch_then_rate_limited(io_loop: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    fetch, clock = FakeJwks(rsa_jwk(rsa_key, "k1")), FakeClock()
    auth = jwks_auth(fetch, clock)
    await auth.identity(rs(rsa_key, "k1"))
    assert fetch.calls == 1
    clock.t += JWKS_MIN_REFETCH_S
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key, "nope"))
    assert fetch.calls == 2
    # within JWKS_MIN_REFETCH_S of the last fetch: no fetch, refused
    for _ in range(5):
        clock.t += 1
        with pytest.raises(UnknownKeyId):
            await auth.identity(rs(rsa_key, "nope"))
    assert fetch.calls == 2
    clock.t += JWKS_MIN_REFETCH_S
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key, "nope"))
    assert fetch.calls == 3
    # a token without a kid is refused too
    clock.t += JWKS_MIN_REFETCH_S
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key, None))


@pytest.mark.gen_test
async def test_jwks_rotated_key_is_picked_up(io_loop: Any, rsa_key: rsa.RSAPrivateKey,
                                            rsa_key2: rsa.RSAPrivateKey) -> None:
    fetch, clock = FakeJwks(rsa_jwk(rsa_key, "k1")), FakeClock()
    auth = jwks_auth(fetch, clock)
    await auth.identity(rs(rsa_key, "k1"))
    fetch.document = {"keys": [rsa_jwk(rsa_key, "k1"), rsa_jwk(rsa_key2, "k2")]}
    clock.t += JWKS_MIN_REFETCH_S + 1
    assert (await auth.identity(rs(rsa_key2, "k2"))).user_id == "u1"
    assert fetch.calls == 2
    # both keys now served from the cache
    await auth.identity(rs(rsa_key, "k1"))
    await auth.identity(rs(rsa_key2, "k2"))
    assert fetch.calls == 2


@pytest.mark.gen_test
async def test_jwks_kid_with_wrong_key_or_alg_is_refused(io_loop: Any, rsa_key: rsa.RSAPrivateKey,
                                                        rsa_key2: rsa.RSAPrivateKey) -> None:
    fetch, clock = FakeJwks(rsa_jwk(rsa_key, "k1")), FakeClock()
    auth = jwks_auth(fetch, clock)
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key2, "k1"))  # signed by another key under a known kid
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key, "k1", alg="RS512"))  # the key says RS256
    # HS256 signed with the JWK's modulus or anything else: no secret, refused
    with pytest.raises(AuthError):
        await auth.identity(hs(claims(), headers={"kid": "k1"}))


@pytest.mark.gen_test
async def test_jwks_symmetric_and_broken_entries_are_ignored(io_loop: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    oct_key = {"kty": "oct", "kid": "h1", "alg": "HS256", "k": b64(SECRET.encode())}
    broken = {"kty": "RSA", "kid": "bad", "n": "AA", "e": "AQAB"}
    fetch, clock = FakeJwks(oct_key, broken, {"kid": "nokty"}, rsa_jwk(rsa_key, "k1")), FakeClock()
    auth = jwks_auth(fetch, clock)
    assert (await auth.identity(rs(rsa_key, "k1"))).user_id == "u1"
    with pytest.raises(AuthError):
        await auth.identity(hs(claims(), headers={"kid": "h1"}))


@pytest.mark.gen_test
async def test_jwks_fetch_failure_refuses_tokens_without_crashing(io_loop: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    fetch, clock = FakeJwks(rsa_jwk(rsa_key, "k1")), FakeClock()
    fetch.fail = OSError("connection refused")
    auth = jwks_auth(fetch, clock)
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key, "k1"))
    assert fetch.calls == 1
    # a failed fetch is rate limited too
    clock.t += 1
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key, "k1"))
    assert fetch.calls == 1
    # the endpoint answers garbage
    fetch.fail = None
    fetch.document = ["not", "a", "jwks"]  # type: ignore[assignment]
    clock.t += JWKS_MIN_REFETCH_S
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key, "k1"))
    assert fetch.calls == 2
    # the endpoint is back
    fetch.document = {"keys": [rsa_jwk(rsa_key, "k1")]}
    clock.t += JWKS_MIN_REFETCH_S
    assert (await auth.identity(rs(rsa_key, "k1"))).user_id == "u1"
    assert fetch.calls == 3


@pytest.mark.gen_test
async def test_jwks_cache_older_than_max_age_reloads(io_loop: Any, rsa_key: rsa.RSAPrivateKey,
                                                    rsa_key2: rsa.RSAPrivateKey) -> None:
    fetch, clock = FakeJwks(rsa_jwk(rsa_key, "k1")), FakeClock()
    auth = jwks_auth(fetch, clock, max_age_s=600.0)
    await auth.identity(rs(rsa_key, "k1"))
    fetch.document = {"keys": [rsa_jwk(rsa_key2, "k2")]}  # k1 rotated out
    clock.t += 599
    await auth.identity(rs(rsa_key, "k1"))
    assert fetch.calls == 1
    clock.t += 2
    with pytest.raises(AuthError):
        await auth.identity(rs(rsa_key, "k1"))
    assert fetch.calls == 2
    assert (await auth.identity(rs(rsa_key2, "k2"))).user_id == "u1"
    assert fetch.calls == 2


@pytest.mark.gen_test
async def test_authenticator_without_fetcher(io_loop: Any) -> None:
    auth = Authenticator(TokenVerifier(Settings(jwt_secret=SECRET)), None, clock=FakeClock())
    assert (await auth.identity(hs(claims()))).user_id == "u1"
    with pytest.raises(AuthError):
        await auth.identity(hs(claims(), key="t" * 32))
    with pytest.raises(AuthError):
        await auth.grant(hs(claims()))
