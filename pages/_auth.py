"""Hosted mode in the app: its configuration, the login gate, and the network check.

Hosted mode (:mod:`core.hosted`) is on when a hosted configuration exists. Then nobody sees
more than the sign-in until :func:`access_gate` lets them in (a usable login set-up and a
user the policy accepts). Without it, :func:`network_refusal` keeps a server that anyone on
the network could reach from serving (unless the operator opted in).
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any

import streamlit as st

from core.hosted import HostedConfig, hosted_config_path, is_loopback, network_problem
from core.login import cookie_secret_problem
from pages._messages import md

log = logging.getLogger("featurescope.app")


def hosted() -> Any | None:
    """The hosted configuration (:class:`core.hosted.HostedConfig`), or ``None`` when the
    app serves one researcher. Re-read when the file changes; a broken file raises
    ``HostedConfigError`` (the app shows it and stops)."""
    path = hosted_config_path()
    if path is None:
        return None
    return _hosted_at(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _hosted_at(path: str, mtime_ns: int) -> Any:
    return HostedConfig.load(path)


def session_id() -> str:
    """A random id for this browser session (never derived from user data)."""
    if "fs_session" not in st.session_state:
        st.session_state["fs_session"] = uuid.uuid4().hex
    return st.session_state["fs_session"]


def _auth_secrets() -> dict[str, Any] | None:
    """The ``[auth]`` section of the secrets, or ``None`` when there is none."""
    try:
        return dict(st.secrets["auth"]) if "auth" in st.secrets else None
    except Exception:  # no secrets file at all
        return None


def _logged_in() -> bool:
    try:
        return bool(st.user.is_logged_in)
    except Exception:  # no login configured
        return False


def user_claims() -> dict[str, Any]:
    """The signed-in user's identity-token claims (``st.user``); empty when signed out."""
    return dict(st.user.to_dict()) if _logged_in() else {}


def user_email() -> str | None:
    """The signed-in user's email, or ``None``."""
    email = user_claims().get("email")
    return str(email) if email else None


def _login_problem() -> str | None:
    """An operator error that stops every session: no login provider, or a cookie secret
    that would let anyone forge a login (:func:`core.login.cookie_secret_problem`)."""
    auth = _auth_secrets()
    if auth is None:
        return (
            "This server requires a login, but no login provider is configured. Operator: add "
            "an [auth] section to .streamlit/secrets.toml (see secrets.example.toml), or set "
            "auth.required = false in the hosted configuration."
        )
    problem = cookie_secret_problem(auth)
    return None if problem is None else f"This server cannot offer a safe login: {problem}."


def may_enter(cfg: Any) -> bool:
    """True when this session may use the app (hosted mode): no login needed, or a usable
    login set-up and a signed-in user the policy accepts."""
    if not cfg.auth.required:
        return True
    if _login_problem() is not None or not _logged_in():
        return False
    return cfg.auth.user_refusal(user_claims()) is None


def access_gate(cfg: Any) -> bool:
    """True when this session may use the app. Otherwise shows only the sign-in (or the
    refusal) and returns False; the caller stops the script."""
    if may_enter(cfg):
        return True
    st.markdown("## :material/biotech: FeatureScope")
    problem = _login_problem()
    if problem is not None:
        log.error("hosted mode: %s", problem)
        st.error(problem, icon=":material/lock:")
        return False
    if not _logged_in():
        st.info("Sign in to use this server.", icon=":material/lock:")
        st.button("Sign in", type="primary", icon=":material/login:", on_click=st.login)
        return False
    email = user_email()
    reason = cfg.auth.user_refusal(user_claims())
    log.warning("refused sign-in by %r: %s", email, reason)
    shown = ascii(email)[1:-1] if email else "(no email)"  # control characters made visible
    st.error(
        f"The account {md(shown)} is not allowed on this server: "
        f"{md(str(reason))}. Sign in with another account, or ask the operator.",
        icon=":material/block:",
    )
    st.button("Sign out", icon=":material/logout:", on_click=st.logout)
    return False


_NETWORK_WARNED: set[str] = set()


def network_refusal(cfg: Any | None) -> str | None:
    """An operator error when this server listens on a network without hosted mode (and
    without the opt-in, :func:`core.hosted.network_problem`); ``None`` otherwise. The
    opt-in (or an unset address) is logged as a warning once per process."""
    address = st.get_option("server.address")
    problem = network_problem(address, cfg is not None)
    if problem is not None and address:
        log.error("%s", problem)
        return f"This server is not safe to use: {problem}."
    exposed = cfg is None and not is_loopback(address)
    if exposed and str(address) not in _NETWORK_WARNED:
        _NETWORK_WARNED.add(str(address))
        log.warning(
            "serving on %s without hosted mode: anyone who reaches this port can load any "
            "file this process can read",
            address or "every network interface",
        )
    return None
