"""Hosted mode: who may use a shared server, what may be loaded there, and how much.

Hosted mode is on when a hosted configuration file exists: the path in
``$FEATURESCOPE_HOSTED``, else ``.streamlit/hosted.toml`` (template:
``.streamlit/hosted.example.toml``). Without it the app serves one researcher and
none of this applies.

The configuration sets:

* ``[auth]``: login through Streamlit's OIDC support (``st.login``; the provider is
  configured in ``.streamlit/secrets.toml``, never committed), restricted to
  ``allowed_emails`` and/or ``allowed_domains``;
* ``path_roots``: the only directories local models, dictionaries, datasets and
  precomputed outputs may come from (no ``..``, symlinks may not lead out);
* ``[[models]]``, ``[[dictionaries]]``, ``[[datasets]]``, ``precomputed``: the allowlist.
  Each entry is a source spec (see :mod:`core.sources`) plus a ``label``; a request is
  allowed when it equals an entry, except that a dataset's ``n_tokens`` and
  ``context_length`` may be chosen within the limits. No other hub id or path loads;
* ``[knowledge] writers``: the accounts (emails, or domains) that may edit labels, notes,
  lists and explanations; empty: every account allowed in; the others read only;
* ``[limits]``: prompt length, tokens per request, features per export and per job,
  concurrent computations, generated tokens, and the cache size.

Everything here is plain Python (no Streamlit, no torch), so it is tested directly.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import FeaturescopeError
from core.login import EmailError, normal_domain, parse_email, unverified_reason
from core.settings import HOSTED_ENV, NETWORK_ENV, allow_network, hosted_file
from core.source_guard import SourceError, available_devices, validate_device
from core.specs import (
    DatasetSpec,
    DictionarySpec,
    ModelSpec,
    parse_dataset,
    parse_dictionary,
    parse_model,
)

ENV = HOSTED_ENV
DEFAULT_FILE = Path(__file__).resolve().parent.parent / ".streamlit" / "hosted.toml"
MAX_ROOT_ENTRIES = 20_000  # files checked for symlink escapes in one source directory


class AccessError(FeaturescopeError, ValueError):
    """A request hosted mode refuses; the message says what is allowed instead."""


class HostedConfigError(FeaturescopeError, ValueError):
    """The hosted configuration file is wrong (an operator error)."""


@dataclass
class AuthPolicy:
    """Login and the accounts that may use the server (emails are read strictly, see
    :mod:`core.login`)."""

    required: bool = True
    allowed_emails: list[str] = field(default_factory=list)
    allowed_domains: list[str] = field(default_factory=list)
    #: accept a login whose identity token has no ``email_verified`` claim (for providers
    #: that never send it); a claim that says "not verified" is refused regardless
    allow_missing_email_verified: bool = False

    def refusal(self, email: object) -> str | None:
        """Why ``email`` may not use the server, or ``None`` when it is listed or in a
        listed domain (exact, case-insensitive comparison of the parsed address)."""
        if not self.required:
            return None
        try:
            local, domain = parse_email(email)
        except EmailError as exc:
            return f"the account's email address is not valid: {exc}"
        emails = {parse_email(e) for e in self.allowed_emails}
        domains = {normal_domain(d) for d in self.allowed_domains}
        if (local, domain) in emails or domain in domains:
            return None
        return "this account is not on this server's list of allowed accounts"

    def allows(self, email: object) -> bool:
        """True when ``email`` is listed or in a listed domain."""
        return self.refusal(email) is None

    def user_refusal(self, claims: Mapping[str, Any]) -> str | None:
        """Why the signed-in user with identity-token ``claims`` (``st.user``) may not use
        the server, or ``None``."""
        if not self.required:
            return None
        return self.refusal(claims.get("email")) or unverified_reason(
            claims, self.allow_missing_email_verified
        )

    def validate(self, source: str) -> None:
        """:class:`HostedConfigError` for an allowlist entry that is not an email/domain."""
        for name, entries, parse in (
            ("allowed_emails", self.allowed_emails, parse_email),
            ("allowed_domains", self.allowed_domains, normal_domain),
        ):
            if not isinstance(entries, list):
                raise HostedConfigError(f"{source}: auth.{name} must be a list")
            for entry in entries:
                try:
                    parse(entry)
                except EmailError as exc:
                    raise HostedConfigError(f"{source}: auth.{name}: {exc}") from exc


@dataclass
class KnowledgePolicy:
    """Who may write to the knowledge store (labels, notes, lists, explanations).

    ``writers`` lists emails and domains (compared as :class:`AuthPolicy` does); empty means
    every account that may use the server may also write. Others read only."""

    writers: list[str] = field(default_factory=list)

    def refusal(self, email: object) -> str | None:
        """Why ``email`` may not write (``None``: it may)."""
        if not self.writers:
            return None
        try:
            local, domain = parse_email(email)
        except EmailError:
            return "sign in with an account that may edit (this server's [knowledge] writers)"
        emails = {parse_email(w) for w in self.writers if _is_email(w)}
        domains = {normal_domain(w) for w in self.writers if not _is_email(w)}
        if (local, domain) in emails or domain in domains:
            return None
        return "this account may read but not edit here (it is not in [knowledge] writers)"

    def validate(self, source: str) -> None:
        if not isinstance(self.writers, list):
            raise HostedConfigError(f"{source}: knowledge.writers must be a list")
        for entry in self.writers:
            try:
                parse_email(entry) if _is_email(entry) else normal_domain(entry)
            except EmailError as exc:
                raise HostedConfigError(f"{source}: knowledge.writers: {exc}") from exc


def _is_email(entry: object) -> bool:
    """An address (``a@b.org``) rather than a domain (``b.org`` or ``@b.org``)."""
    return isinstance(entry, str) and "@" in entry.strip().removeprefix("@")


@dataclass
class Limits:
    """What one request may ask for."""

    max_prompt_chars: int = 4000
    max_prompt_tokens: int = 512
    max_dataset_tokens: int = 262_144
    max_context_length: int = 1024
    max_features_per_export: int = 64
    max_features_per_job: int = 4096
    max_concurrent_computations: int = 1
    max_new_tokens: int = 64
    cache_size_gb: float = 20.0

    def check_prompt(self, text: str) -> str:
        """The prompt, or :class:`AccessError` when it is empty or too long."""
        if not isinstance(text, str) or not text.strip():
            raise AccessError("the prompt is empty: type some text")
        if len(text) > self.max_prompt_chars:
            raise AccessError(
                f"the prompt has {len(text):,} characters; this server allows "
                f"{self.max_prompt_chars:,}: shorten it"
            )
        return text

    def check_count(self, n: int, what: str, limit: int) -> int:
        if n > limit:
            raise AccessError(f"{n:,} {what} requested; this server allows {limit:,} at a time")
        return n


@dataclass
class HostedConfig:
    """The whole hosted configuration (see the module docstring)."""

    auth: AuthPolicy = field(default_factory=AuthPolicy)
    limits: Limits = field(default_factory=Limits)
    knowledge: KnowledgePolicy = field(default_factory=KnowledgePolicy)
    path_roots: list[str] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    dictionaries: list[dict[str, Any]] = field(default_factory=list)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    precomputed: list[str] = field(default_factory=list)
    source: str = ""  # the file it was read from

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> HostedConfig:
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = set(data) - known
        if unknown:
            raise HostedConfigError(
                f"{source or 'hosted config'}: unknown setting(s) {sorted(unknown)}; "
                f"known: {sorted(known)}"
            )
        try:
            auth = AuthPolicy(**dict(data.get("auth") or {}))
            limits = Limits(**dict(data.get("limits") or {}))
            knowledge = KnowledgePolicy(**dict(data.get("knowledge") or {}))
        except TypeError as exc:
            raise HostedConfigError(f"{source or 'hosted config'}: {exc}") from exc
        auth.validate(source or "hosted config")
        knowledge.validate(source or "hosted config")
        for name in ("max_prompt_chars", "max_prompt_tokens", "max_dataset_tokens"):
            if getattr(limits, name) < 1:
                raise HostedConfigError(f"{source}: limits.{name} must be at least 1")
        if limits.max_concurrent_computations < 1:
            raise HostedConfigError(f"{source}: limits.max_concurrent_computations must be >= 1")
        cfg = cls(
            auth=auth,
            limits=limits,
            knowledge=knowledge,
            path_roots=[str(p) for p in data.get("path_roots") or []],
            models=[_entry("model", m, source) for m in data.get("models") or []],
            dictionaries=[_entry("dictionary", d, source) for d in data.get("dictionaries") or []],
            datasets=[_entry("dataset", d, source) for d in data.get("datasets") or []],
            precomputed=[str(p) for p in data.get("precomputed") or []],
            source=source,
        )
        cfg._validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> HostedConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise HostedConfigError(f"cannot read the hosted configuration {path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def _validate(self) -> None:
        for part, cls, entries in (
            ("models", ModelSpec, self.models),
            ("dictionaries", DictionarySpec, self.dictionaries),
            ("datasets", DatasetSpec, self.datasets),
        ):
            for entry in entries:
                try:
                    cls.from_dict(_strip(entry))
                except (ValueError, TypeError) as exc:
                    msg = f"{self.source}: [[{part}]] entry {entry}: {exc}"
                    raise HostedConfigError(msg) from exc
        for root in self.path_roots:
            if not Path(root).is_absolute():
                raise HostedConfigError(f"{self.source}: path_roots must be absolute, got {root!r}")

    # --- paths ---------------------------------------------------------------------------
    def roots(self) -> list[Path]:
        return [Path(os.path.realpath(r)) for r in self.path_roots]

    def check_path(self, path: str) -> str:
        """The real path of ``path`` when it lies under a configured root, else
        :class:`AccessError`. ``..`` is refused outright and symlinks are resolved, so a
        link inside a root cannot lead out of it (for a directory, none of its entries
        may either)."""
        if not isinstance(path, str) or not path.strip():
            raise AccessError("an empty path was given")
        if "\x00" in path:
            raise AccessError("the path contains a NUL character")
        raw = Path(path)
        if ".." in raw.parts:
            raise AccessError(f"'..' is not allowed in paths on this server: {path!r}")
        if not raw.is_absolute():
            raise AccessError(f"give an absolute path under {self._roots_text()}, got {path!r}")
        real = Path(os.path.realpath(raw))
        roots = self.roots()
        if not any(real.is_relative_to(r) for r in roots):
            raise AccessError(
                f"{path!r} is outside the directories this server may read ({self._roots_text()})"
            )
        if real.is_dir():
            for n, entry in enumerate(real.rglob("*")):
                if n >= MAX_ROOT_ENTRIES:
                    raise AccessError(f"{path!r} holds too many files to check")
                target = Path(os.path.realpath(entry))
                if not any(target.is_relative_to(r) for r in roots):
                    raise AccessError(f"{entry} links outside the directories this server may read")
        return str(real)

    def _roots_text(self) -> str:
        return ", ".join(self.path_roots) if self.path_roots else "no directories are configured"

    # --- sources -------------------------------------------------------------------------
    def choices(self, part: str) -> list[tuple[str, dict[str, Any]]]:
        """(label, canonical spec) of each allowlisted entry of ``part`` (model,
        dictionary, dataset), in file order."""
        cls, entries = self._part(part)
        out = []
        for entry in entries:
            spec = cls.from_dict(_strip(entry)).to_dict()
            out.append((str(entry.get("label") or cls.from_dict(spec).label()), spec))
        return out

    def _part(self, part: str) -> tuple[type, list[dict[str, Any]]]:
        table = {
            "model": (ModelSpec, self.models),
            "dictionary": (DictionarySpec, self.dictionaries),
            "dataset": (DatasetSpec, self.datasets),
        }
        if part not in table:
            raise ValueError(f"unknown source part {part!r}")
        return table[part]

    def check_spec(self, part: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The canonical spec when the allowlist has it, else :class:`AccessError`."""
        cls, _ = self._part(part)
        want = cls.from_dict(dict(spec)).to_dict()
        free = _CHOSEN_BY_USER.get(part, set())
        choices = self.choices(part)
        for _, allowed in choices:
            if all(want[k] == v for k, v in allowed.items() if k not in free):
                if part == "dataset":
                    self._check_dataset_size(want)
                if part == "model":
                    check_device(want.get("device"))
                if want.get("path") and _is_local(want):
                    want["path"] = self.check_path(want["path"])
                return want
        names = ", ".join(label for label, _ in choices) or "none"
        raise AccessError(
            f"this {part} is not on this server's allowlist ({_describe(want)}); allowed: {names}"
        )

    def _check_dataset_size(self, spec: dict[str, Any]) -> None:
        n, length = spec["n_tokens"], spec["context_length"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, length)):
            raise AccessError(
                "the token budget and context length must be whole numbers "
                f"(got {n!r} tokens, context {length!r})"
            )
        if n < 1 or length < 2:
            raise AccessError(
                "the token budget and context length must be positive "
                f"(got {n:,} tokens, context {length})"
            )
        if n > self.limits.max_dataset_tokens:
            raise AccessError(
                f"{n:,} dataset tokens requested; this server allows "
                f"{self.limits.max_dataset_tokens:,}"
            )
        if length > self.limits.max_context_length:
            raise AccessError(
                f"context length {length} requested; this server allows "
                f"{self.limits.max_context_length}"
            )

    def check_sources(self, sources: dict[str, Any]) -> dict[str, Any]:
        """Sources as the app will load them, or :class:`AccessError`."""
        if "factory" in sources:
            raise AccessError("test workspaces cannot be opened on a hosted server")
        if "precomputed" in sources:
            path = self.check_path(str(sources["precomputed"]))
            allowed = {os.path.realpath(p) for p in self.precomputed}
            if path not in allowed:
                raise AccessError(
                    "this precomputed output is not on this server's allowlist; "
                    f"allowed: {', '.join(self.precomputed) or 'none'}"
                )
            return {"precomputed": path}
        return {
            part: self.check_spec(part, dict(sources.get(part) or {}))
            for part in ("model", "dictionary", "dataset")
        }


#: spec fields an allowlisted entry does not fix: the dataset's size is the user's choice
#: (within the limits), and the server decides where a model runs
_CHOSEN_BY_USER: dict[str, set[str]] = {
    "dataset": {"n_tokens", "context_length"},
    "model": {"device"},
}


def _entry(part: str, entry: Any, source: str) -> dict[str, Any]:
    """An allowlist entry as a spec dict (plus ``label``). An entry is a spec table, a
    source string read by :mod:`core.specs` (``"gpt2-small"``, ``"local:/models/x"``), or a
    table with such a string under ``source`` and other spec fields beside it (e.g.
    ``{source = "NeelNanda/pile-10k", n_tokens = 131072}``)."""
    if isinstance(entry, str):
        entry = {"source": entry}
    if not isinstance(entry, dict):
        raise HostedConfigError(f"{source}: a {part} entry must be a string or a table: {entry!r}")
    entry = dict(entry)
    text = entry.pop("source", None)
    if text is None:
        return entry
    try:
        if part == "dictionary":
            layer, weights = entry.pop("layer", None), entry.pop("weights_file", None)
            spec = parse_dictionary(text, clt_layer=layer, clt_weights=weights).to_dict()
        else:
            spec = (parse_model if part == "model" else parse_dataset)(text).to_dict()
    except SourceError as exc:
        raise HostedConfigError(f"{source}: {part} entry {text!r}: {exc}") from exc
    return {**spec, **entry}


def _strip(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "label"}


def _is_local(spec: dict[str, Any]) -> bool:
    """True when the spec's ``path`` names a local file or directory (not a hub id)."""
    kind = spec.get("kind")
    if kind in ("local", "saelens_local", "directions"):
        return True
    if kind == "clt":  # a CLT path is a directory or a Hugging Face repo id
        return Path(spec["path"]).is_absolute() or Path(spec["path"]).exists()
    return False


def _describe(spec: dict[str, Any]) -> str:
    keys = ("kind", "name", "release", "sae_id", "path", "layer")
    return ", ".join(f"{k}={spec[k]!r}" for k in keys if spec.get(k) is not None)


def hosted_config_path() -> Path | None:
    """The hosted configuration file in effect, or ``None`` (single-researcher mode)."""
    env = hosted_file()
    if env:
        if not Path(env).is_file():
            raise HostedConfigError(f"${ENV} names {env}, which is not a file")
        return Path(env)
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


def load_hosted_config(path: str | Path | None = None) -> HostedConfig | None:
    """The hosted configuration, or ``None`` when the server runs for one researcher."""
    path = path if path is not None else hosted_config_path()
    return None if path is None else HostedConfig.load(path)


# ---- devices ---------------------------------------------------------------------------------
def server_devices() -> list[str]:
    """The devices a model may be placed on here, as offered to users: ``auto`` and what
    :func:`core.settings.available_devices` finds (torch is imported on the call) (``cpu``, ``cuda:N``, ``mps``)."""
    return ["auto", *available_devices()]


def check_device(device: object) -> str:
    """``device`` when this server has it (:func:`core.source_guard.validate_device`), else
    :class:`AccessError` naming the ones it has. Called before anything loads."""
    try:
        validate_device(device)
    except SourceError as exc:
        raise AccessError(str(exc)) from exc
    return str(device)


# ---- serving on a network ------------------------------------------------------------------------


def is_loopback(address: str | None) -> bool:
    """True when the server listens on this machine only (``127.0.0.1``, ``::1``,
    ``localhost``); an unset address means every interface."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def network_problem(
    address: str | None, hosted: bool, environ: Mapping[str, str] | None = None
) -> str | None:
    """Why a server listening on ``address`` must not serve (an operator error), or
    ``None``. Without hosted mode any local path can be loaded, so the app only serves
    on a network when the operator opted in with ``$FEATURESCOPE_ALLOW_NETWORK=1``
    (read from ``environ`` when given, else by :func:`core.settings.allow_network`)."""
    opted_in = allow_network() if environ is None else environ.get(NETWORK_ENV) == "1"
    if hosted or is_loopback(address) or opted_in:
        return None
    return (
        f"this server listens on {address or 'every network interface'}, and without hosted "
        "mode anyone who reaches it can load any file on this machine. Operator: serve on "
        "127.0.0.1 (the default of .streamlit/config.toml), use hosted mode (README, "
        f"'Hosted mode'), or opt in with {NETWORK_ENV}=1 (make run-network)"
    )
