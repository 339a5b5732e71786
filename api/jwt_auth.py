"""Optional JWT bearer tokens, next to API keys: configured by a shared secret (HS256) or a JWKS
file of public keys (RS256/ES256), never both.

The algorithm is pinned to the configured one (a token's own `alg` header is never trusted, so
`alg: none` and HS/RS confusion -- an HS256 token "signed" with the RSA public key -- are
refused); `exp`, `aud` and `iss` are required and checked; the user is one configured claim.
Every refusal is the same `JwtRefused`, which the caller turns into a 401.

JWT users have their own namespace: the user id is `jwt:<issuer>:<claim>` (the configured
issuer, which the token's `iss` must equal), never the bare claim, so a JWT with `sub=alice`
reads none of API-key user alice's runs (`longrun keys create` refuses user ids beginning
`jwt:`). longrun keeps no deny-list of JWTs: what revokes one is its issuer (a short `exp`), or
rotating the secret or the JWKS file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from shared.config import Settings
from shared.errors import ConfigError
from shared.store.users import JWT_USER_PREFIX

HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"})
MAX_TOKEN_CHARS = 8192


class JwtRefused(Exception):
    pass


@dataclass(frozen=True)
class JwtIdentity:
    user: str  # `jwt:<issuer>:<claim>`
    expires_at: int  # the token's `exp` (unix seconds)


def jwt_user(issuer: str, claim: str) -> str:
    """The user id of a JWT caller: namespaced by issuer, apart from every API-key user."""
    return f"{JWT_USER_PREFIX}{issuer}:{claim}"


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated base64url parts; our API keys (`lr_...`) never contain a dot."""
    return token.count(".") == 2 and not token.startswith("lr_")


@dataclass(frozen=True)
class JwtVerifier:
    algorithm: str
    audience: str
    issuer: str
    user_claim: str
    leeway: float
    secret: bytes | None = None
    keys: tuple[tuple[str | None, Any], ...] = ()  # (kid, public key)

    @classmethod
    def from_settings(cls, s: Settings) -> JwtVerifier | None:
        """None when JWTs are not configured; ConfigError when half-configured."""
        if s.jwt_secret is None and s.jwt_jwks_file is None:
            return None
        if s.jwt_secret is not None and s.jwt_jwks_file is not None:
            raise ConfigError("set LONGRUN_JWT_SECRET or LONGRUN_JWT_JWKS_FILE, not both")
        if not s.jwt_audience or not s.jwt_issuer:
            raise ConfigError("JWT auth needs LONGRUN_JWT_AUDIENCE and LONGRUN_JWT_ISSUER")
        secret: bytes | None = None
        keys: tuple[tuple[str | None, Any], ...] = ()
        if s.jwt_secret is not None:
            alg = s.jwt_algorithm or "HS256"
            if alg not in HMAC_ALGS:
                raise ConfigError(f"LONGRUN_JWT_SECRET goes with an HS algorithm, not {alg}")
            if len(s.jwt_secret) < 32:
                raise ConfigError("LONGRUN_JWT_SECRET must be at least 32 characters")
            secret = s.jwt_secret.encode()
        else:
            alg = s.jwt_algorithm or "RS256"
            if alg not in PUBLIC_ALGS:
                raise ConfigError(f"LONGRUN_JWT_JWKS_FILE goes with RS/ES/PS algorithms, not {alg}")
            keys = load_jwks(Path(str(s.jwt_jwks_file)))
        return cls(
            algorithm=alg,
            audience=s.jwt_audience,
            issuer=s.jwt_issuer,
            user_claim=s.jwt_user_claim,
            leeway=s.jwt_leeway_seconds,
            secret=secret,
            keys=keys,
        )

    def _key_for(self, token: str) -> Any:
        if self.secret is not None:
            return self.secret
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise JwtRefused("malformed token") from None
        for key_id, key in self.keys:
            if key_id == kid or (kid is None and len(self.keys) == 1):
                return key
        raise JwtRefused("unknown key id")

    def identity(self, token: str) -> JwtIdentity:
        """Who the token names and until when, or JwtRefused."""
        if len(token) > MAX_TOKEN_CHARS:
            raise JwtRefused("token too long")
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "aud", "iss", self.user_claim]},
            )
        except jwt.PyJWTError as exc:
            raise JwtRefused(type(exc).__name__) from None
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user or len(user) > 256:
            raise JwtRefused("no usable user claim")
        exp = claims["exp"]
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise JwtRefused("exp is not a number")
        return JwtIdentity(jwt_user(self.issuer, user), int(exp))


def load_jwks(path: Path) -> tuple[tuple[str | None, Any], ...]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keyset = jwt.PyJWKSet.from_dict(data)
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"cannot load the JWKS file {path}: {exc}") from exc
    found = tuple((k.key_id, k.key) for k in keyset.keys)
    if not found:
        raise ConfigError(f"the JWKS file {path} has no usable keys")
    return found
