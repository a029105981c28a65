"""Who a signed-in visitor is, read strictly: emails, the identity token's claims, the
cookie secret that signs Streamlit's login cookie.

Hosted mode (:mod:`core.hosted`) lets a visitor in by the email address their identity
provider vouches for. Everything here refuses what it cannot read unambiguously:

* an email is exactly ``local@domain``: one ``@``, ASCII only, no whitespace or control
  characters, a non-empty local part made of RFC 5322 "atext" and single dots, a domain of
  dot-separated letters, digits and hyphens. Domains compare case-insensitively, exactly;
* the provider must say the address is verified (``email_verified``), unless the operator
  declares that their provider never sends that claim;
* the cookie secret must exist, be at least :data:`MIN_SECRET_BYTES` bytes, and not be a
  value published in this repository (anyone could sign a login cookie with it).

Plain Python (no Streamlit), so it is tested directly.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import FeaturescopeError

EXAMPLE_SECRETS = Path(__file__).resolve().parent.parent / ".streamlit" / "secrets.example.toml"
MIN_SECRET_BYTES = 32
#: secrets ever shipped in this repository's example file: public, so never accepted
PUBLISHED_SECRETS = frozenset({"a long random string"})

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


class EmailError(FeaturescopeError, ValueError):
    """An email address that is not exactly ``local@domain``."""


def parse_email(text: object) -> tuple[str, str]:
    """``(local, domain)`` of a strict email address, both lower-cased; else
    :class:`EmailError` naming what is wrong."""
    if not isinstance(text, str) or not text:
        raise EmailError("no email address")
    if not text.isascii():
        raise EmailError(f"{text!r} has non-ASCII characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise EmailError(f"{text!r} contains whitespace or control characters")
    if text.count("@") != 1:
        raise EmailError(f"{text!r} must contain exactly one '@'")
    local, domain = text.split("@")
    if not local:
        raise EmailError(f"{text!r} has an empty local part (before '@')")
    if len(text) > 254 or len(local) > 64:
        raise EmailError(f"{text!r} is too long for an email address")
    if _LOCAL.fullmatch(local) is None:
        raise EmailError(f"{text!r} has characters or dots an email's local part cannot have")
    if _DOMAIN.fullmatch(domain) is None:
        raise EmailError(f"{text!r} does not end in a domain name like example.org")
    return local.lower(), domain.lower()


def normal_domain(text: object) -> str:
    """A configured domain (``"team.example"`` or ``"@team.example"``), lower-cased; else
    :class:`EmailError`."""
    if not isinstance(text, str):
        raise EmailError(f"{text!r} is not a domain name")
    domain = text.strip().removeprefix("@")
    if not domain.isascii() or _DOMAIN.fullmatch(domain) is None:
        raise EmailError(f"{text!r} is not a domain name like example.org")
    return domain.lower()


def claim_true(value: Any) -> bool:
    """True for a claim that says yes: ``true`` (JSON) or the string ``"true"`` (some
    providers send strings)."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"


def unverified_reason(claims: Mapping[str, Any], allow_missing: bool) -> str | None:
    """Why the email in ``claims`` cannot be trusted as verified, or ``None``."""
    if "email_verified" not in claims:
        if allow_missing:
            return None
        return (
            "the identity provider did not say whether this email address is verified "
            "(no email_verified claim). Operator: if your provider never sends it, set "
            "auth.allow_missing_email_verified = true in the hosted configuration"
        )
    if not claim_true(claims["email_verified"]):
        return "the identity provider says this email address is not verified: verify it first"
    return None


def cookie_secret_problem(auth: Mapping[str, Any] | None) -> str | None:
    """What is wrong with the ``[auth]`` secrets' ``cookie_secret`` (which signs the login
    cookie), or ``None`` when it is usable."""
    fix = (
        "Operator: set [auth] cookie_secret in .streamlit/secrets.toml to a new random value "
        "of at least 32 bytes, e.g. the output of "
        "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    )
    secret = None if auth is None else auth.get("cookie_secret")
    if not isinstance(secret, str) or not secret:
        return f"the login cookie secret is missing. {fix}"
    if secret in published_secrets():
        return (
            "the login cookie secret is the example's published value, so anyone can forge "
            f"a login. {fix}"
        )
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        return (
            f"the login cookie secret is {len(secret.encode('utf-8'))} bytes; "
            f"at least {MIN_SECRET_BYTES} are needed. {fix}"
        )
    return None


def published_secrets() -> frozenset[str]:
    """Every cookie secret this repository publishes (the example file's, and earlier ones)."""
    try:
        data = tomllib.loads(EXAMPLE_SECRETS.read_text(encoding="utf-8"))
        example = data.get("auth", {}).get("cookie_secret")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
        example = None
    return PUBLISHED_SECRETS | ({example} if isinstance(example, str) else set())
