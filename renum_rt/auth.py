"""JWT verification for user tokens and subscription tokens.

Accepted: HS256/384/512 with the shared secret (Supabase-style tokens), RS256/ES256
(and their 384/512 variants) with a PEM public key or keys from a JWKS URL. The
algorithm is chosen by the key the server holds, never by the token alone, which is
what defeats ``alg: none`` and HS/RS key confusion. Verification itself is synchronous
and pure; only fetching a JWKS is I/O, done by ``Authenticator`` when a token names a
key id the cache does not know (at most once per ``JWKS_MIN_REFETCH_S``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import jwt
import ujson

from .channels import ChannelError, Identity, user_channel
from .channels import parse as parse_channel
from .config import Settings

HMAC_ALGS = ["HS256", "HS384", "HS512"]
ASYM_ALGS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"]
JWKS_MIN_REFETCH_S = 10.0
T = TypeVar("T")


class AuthError(Exception):
    """A token is refused; the message says why, and never contains the token."""


class UnknownKeyId(AuthError):
    """The token names a ``kid`` the JWKS cache does not hold (yet)."""


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The claim at a dotted path such as ``app_metadata.role`` (None when absent)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _string_set(value: Any) -> frozenset[str]:
    if isinstance(value, list):
        return frozenset(str(v) for v in value if isinstance(v, (str, int)))
    return frozenset()


class TokenVerifier:
    """Checks signatures and claims; knows which keys and algorithms are trusted."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._secret = settings.jwt_secret or None
        self._public_key = settings.jwt_public_key or None
        self._jwks: dict[str, jwt.PyJWK] = {}
        if not (self._secret or self._public_key or settings.jwks_url):
            raise AuthError(
                "no key to verify tokens: set RENUM_RT_JWT_SECRET, RENUM_RT_JWT_PUBLIC_KEY or RENUM_RT_JWKS_URL"
            )

    def set_jwks(self, document: dict[str, Any]) -> None:
        """Replace the cached JWKS with ``document`` (a parsed ``{"keys": [...]}``)."""
        keys: dict[str, jwt.PyJWK] = {}
        entries = document.get("keys") if isinstance(document, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, TypeError):
                continue
            if key.key_id and key.algorithm_name in ASYM_ALGS:
                keys[key.key_id] = key
        self._jwks = keys

    def _key_for(self, header: dict[str, Any]) -> tuple[Any, list[str]]:
        alg = header.get("alg")
        if alg in HMAC_ALGS and self._secret:
            return self._secret, [alg]
        if alg in ASYM_ALGS:
            kid = header.get("kid")
            if self._settings.jwks_url:
                if not isinstance(kid, str) or kid not in self._jwks:
                    raise UnknownKeyId("token signed by an unknown key")
                key = self._jwks[kid]
                if key.algorithm_name != alg:
                    raise AuthError("token algorithm does not match its key")
                return key.key, [alg]
            if self._public_key:
                return self._public_key, [alg]
        raise AuthError(f"token algorithm {str(alg)[:10]!r} is not accepted")

    def decode(self, token: str, required: list[str]) -> dict[str, Any]:
        """Verified claims of ``token``; raise ``AuthError`` with a reason otherwise."""
        if not isinstance(token, str) or not token:
            raise AuthError("token missing")
        if not token.isascii():
            raise AuthError("token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("token is not a JWT") from None
        key, algorithms = self._key_for(header)
        audience = self._settings.jwt_audience or None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=audience,
                leeway=self._settings.jwt_leeway_s,
                options={"require": required, "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience does not match") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token has no '{exc.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not verify") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("token is invalid") from None
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise AuthError("token 'sub' must be a string")
        try:
            parse_channel(user_channel(sub))
        except ChannelError:
            raise AuthError("token 'sub' is not a usable user id (1 to 128 of A-Z a-z 0-9 _ . @ | = + -)") from None
        return claims

    def identity(self, token: str) -> Identity:
        """The user a session token speaks for. A subscription token (one with a
        ``channel`` claim) opens that channel only, never a session."""
        claims = self.decode(token, ["exp", "sub"])
        if "channel" in claims:
            raise AuthError("a subscription token opens one channel, not a session: use the user token")
        role = claim_at(claims, self._settings.admin_claim)
        want = self._settings.admin_value
        is_admin = role == want or (isinstance(role, list) and want in role)
        return Identity(
            user_id=claims["sub"],
            exp=float(claims["exp"]),
            is_admin=is_admin,
            teams=_string_set(claims.get("teams")),
            executions=_string_set(claims.get("executions")),
        )

    def grant(self, token: str) -> dict[str, Any]:
        """The claims of a subscription token (``sub``, ``channel``, ``exp``)."""
        return self.decode(token, ["exp", "sub", "channel"])


class Authenticator:
    """``TokenVerifier`` plus the JWKS cache refresh, for the I/O layer."""

    def __init__(
        self,
        verifier: TokenVerifier,
        fetch_jwks: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        max_age_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verifier = verifier
        self._fetch = fetch_jwks
        self._max_age_s = max_age_s
        self._clock = clock
        self._fetched_at = -JWKS_MIN_REFETCH_S
        self._loaded_at: float | None = None

    async def _refresh(self) -> bool:
        if self._fetch is None or self._clock() - self._fetched_at < JWKS_MIN_REFETCH_S:
            return False
        self._fetched_at = self._clock()
        try:
            self.verifier.set_jwks(await self._fetch())
        except Exception:  # an unreachable or broken JWKS endpoint refuses tokens, it does not crash
            return False
        self._loaded_at = self._clock()
        return True

    async def _run(self, check: Callable[[str], T], token: str) -> T:
        """Run ``check``; load the JWKS first when it is older than its cache time
        (rotated-out keys stop working), and again when the token names a new kid."""
        if self._fetch is not None and (self._loaded_at is None or self._clock() - self._loaded_at > self._max_age_s):
            await self._refresh()
        try:
            return check(token)
        except UnknownKeyId:
            if not await self._refresh():
                raise
            return check(token)

    async def identity(self, token: str) -> Identity:
        return await self._run(self.verifier.identity, token)

    async def grant(self, token: str) -> dict[str, Any]:
        return await self._run(self.verifier.grant, token)


def http_jwks_fetcher(url: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A JWKS fetcher over Tornado's HTTP client."""
    from tornado.httpclient import AsyncHTTPClient

    async def fetch() -> dict[str, Any]:
        response = await AsyncHTTPClient().fetch(url, request_timeout=5)
        document: dict[str, Any] = ujson.loads(response.body)
        return document

    return fetch


def issue_token(secret: str, sub: str, ttl_s: int = 3600, **claims: Any) -> str:
    """An HS256 token, for ``--dev`` mode and tests (production tokens come from the IdP)."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + ttl_s, **claims}, secret, algorithm="HS256")
