"""Where a JetStream store lives: its URL, and the names of its stream, subjects and buckets.

``nats://host:port[,host:port...][/NAMESPACE][?replicas=N&owner_ttl=S&creds=PATH...]``
(``tls://`` for TLS; ``creds``, ``nkey``, ``tls_ca``, ``tls_cert``, ``tls_key`` name files):
the servers to try, a namespace (default ``foldloop``) so several stores share one NATS account, the
replicas of the stream and buckets when they are made (1; 3 on a cluster), and how long a
runtime that stops renewing its owner key is still held alive (``owner_ttl`` seconds,
default 10, set when the store is made): a killed worker's runs move on after it. Run and call
ids become subject tokens and key-value keys by escaping: what ids may hold that subjects
and keys may not (``.``, ``:``, anything past ASCII letters, digits and ``-``) is written
``_xx`` per byte, ``_`` itself included, so every id maps to exactly one token and back.
"""

from __future__ import annotations

import os
import re
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from foldloop.errors import ConfigError

__all__ = ["NatsTarget", "is_nats_url", "parse_nats_url", "token", "untoken"]

_SAFE = re.compile(r"[A-Za-z0-9-]")
_NAMESPACE = re.compile(r"[A-Za-z0-9-]{1,32}")
_ESCAPED = re.compile(r"_([0-9a-f]{2})")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]+)?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_FILES = ("creds", "nkey", "tls_ca", "tls_cert", "tls_key")


class NatsTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed store URL and the names of everything the store keeps there."""

    url: str
    servers: tuple[str, ...]
    namespace: str = "foldloop"
    replicas: int = 1
    owner_ttl: float = 10.0
    files: tuple[tuple[str, str], ...] = ()
    """Credentials and TLS files named in the URL (``creds``, ``nkey``, ``tls_ca``, ...)."""

    @property
    def shown(self) -> str:
        """The URL as messages and logs show it: without a user's password or token."""
        return shown(self.url)

    def connect_options(self) -> dict[str, Any]:
        """nats-py's connect options for the files the URL names."""
        files = dict(self.files)
        options: dict[str, Any] = {}
        if "creds" in files:
            options["user_credentials"] = files["creds"]
        if "nkey" in files:
            options["nkeys_seed"] = files["nkey"]
        if self.url.startswith("tls://"):
            options["tls_handshake_first"] = True  # TLS before anything, credentials included
        if self.url.startswith("tls://") or "tls_ca" in files or "tls_cert" in files:
            try:
                context = ssl.create_default_context(cafile=files.get("tls_ca"))
                if "tls_cert" in files:
                    context.load_cert_chain(files["tls_cert"], files.get("tls_key"))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"cannot load the TLS files of store URL {self.shown!r} ({exc}); "
                    "tls_ca is a PEM CA bundle, tls_cert and tls_key a PEM certificate and key"
                ) from None
            options["tls"] = context
        return options

    @property
    def stream(self) -> str:
        """The one stream holding every run's events."""
        return f"fl_{self.namespace}_log"

    @property
    def subjects(self) -> str:
        """The stream's subjects: one per run."""
        return f"fl.{self.namespace}.log.>"

    def subject(self, run_id: str) -> str:
        """The subject a run's events are appended to."""
        return f"fl.{self.namespace}.log.{token(run_id)}"

    def run_of(self, subject: str) -> str:
        """The run id of an event subject."""
        return untoken(subject.rsplit(".", 1)[1])

    def cancel_subject(self, run_id: str) -> str:
        """Where a cancel of the run is asked for (``*``: every run's, to listen on)."""
        return f"fl.{self.namespace}.cancel.{run_id if run_id == '*' else token(run_id)}"

    def bucket(self, table: str) -> str:
        """The key-value bucket of a side table (leases, owners, approvals, ...)."""
        return f"fl_{self.namespace}_{table}"


def is_nats_url(location: object) -> bool:
    """True for a store location that names NATS servers rather than a directory."""
    return isinstance(location, str) and location[:7].lower().startswith(("nats://", "tls://"))


def is_other_url(location: object) -> bool:
    """True for a URL of a kind no store is at (``http://``, a mistyped ``nat://``)."""
    return (
        isinstance(location, str)
        and not is_nats_url(location)
        and _SCHEME.match(location) is not None
    )


def parse_nats_url(url: str) -> NatsTarget:
    """Servers, namespace and replicas of a store URL (ConfigError saying what is wrong)."""
    scheme, sep, rest = url.partition("://")
    url = scheme.lower() + sep + rest  # a scheme is case-insensitive (RFC 3986)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a bracketed host that is no IPv6 address, say
        raise ConfigError(f"store URL {shown(url)!r} is not a URL ({exc})") from None
    hosts = parts.netloc.split(",") if parts.netloc else []
    if not hosts:
        raise ConfigError(
            f"no server in store URL {shown(url)!r}; write nats://HOST:PORT (several "
            "comma-separated)"
        )
    for host in hosts:
        _check_server(host, url)
    namespace = parts.path.strip("/") or "foldloop"
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(
            f"the namespace {namespace!r} of store URL {shown(url)!r} must be 1-32 letters, digits "
            "or '-' (it names the stream and buckets: nats://HOST:PORT/NAMESPACE)"
        )
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"replicas", "owner_ttl", *_FILES})
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} in store URL {shown(url)!r}; known: replicas, "
            f"owner_ttl, {', '.join(_FILES)}"
        )
    files = {name: query[name][-1] for name in _FILES if name in query}
    for name, path in files.items():
        if not os.path.isfile(path):
            raise ConfigError(f"{name}={path!r} in store URL {shown(url)!r}: no such file")
    replicas_text = query.get("replicas", ["1"])[-1]
    if not replicas_text.isdigit() or not 1 <= int(replicas_text) <= 5:
        raise ConfigError(
            f"replicas in store URL {shown(url)!r} must be 1 to 5 (JetStream's limit); "
            f"got {replicas_text!r}"
        )
    ttl_text = query.get("owner_ttl", ["10"])[-1]
    try:
        owner_ttl = float(ttl_text)
    except ValueError:
        owner_ttl = 0.0
    if not 1 <= owner_ttl <= 3600:
        raise ConfigError(
            f"owner_ttl in store URL {shown(url)!r} must be 1 to 3600 seconds; got {ttl_text!r}"
        )
    return NatsTarget(
        url=url,
        files=tuple(sorted(files.items())),
        owner_ttl=owner_ttl,
        servers=tuple(f"{parts.scheme}://{host}" for host in hosts),
        namespace=namespace,
        replicas=int(replicas_text),
    )


def _check_server(host: str, url: str) -> None:
    """One HOST[:PORT] of a store URL's server list (ConfigError saying what is wrong)."""
    address = host.rpartition("@")[2]  # past any user:password@
    if address.startswith("["):  # [IPv6]:port
        name, _, port = address.partition("]:")
        name, has_port = name + "]", ":" in address.rpartition("]")[2]
    else:
        name, colon, port = address.rpartition(":") if ":" in address else (address, "", "")
        has_port = bool(colon)
    if not name or name == "[]":
        raise ConfigError(
            f"a server without a host in store URL {shown(url)!r}; write nats://HOST:PORT "
            "(several comma-separated, none empty)"
        )
    if has_port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(
            f"the port {port!r} in store URL {shown(url)!r} is not a port (1-65535); write "
            "HOST:PORT, or HOST alone for 4222"
        )


def shown(url: str) -> str:
    """``url`` as messages and logs may show it: any user:password@ or token@ written as
    ``***@``, and nothing of a password kept (it may hold ``@``, ``,``, ``/`` or ``:``)."""
    scheme, sep, rest = url.partition("://")
    rest, mark, query = rest.partition("?")
    at = rest.rfind("@")
    if not sep or at < 0:
        return url
    last_host, slash, path = rest[at + 1 :].partition("/")
    parts = (rest[:at] + "@" + last_host).split(",")
    hosts = [h for h in (part.rpartition("@")[2] for part in parts) if _HOST.fullmatch(h)]
    return f"{scheme}://***@{','.join(hosts)}{slash}{path}{mark}{query}"


def token(name: str) -> str:
    """``name`` as one subject token or key-value key part (reversible, never empty)."""
    if not name:
        return "_"
    return "".join(c if _SAFE.fullmatch(c) else _escape(c) for c in name)


def untoken(text: str) -> str:
    """The name ``token`` made ``text`` from."""
    if text == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(text):
        match = _ESCAPED.match(text, i)
        if match is not None:
            raw.append(int(match.group(1), 16))
            i = match.end()
        else:
            raw += text[i].encode()
            i += 1
    return raw.decode()


def _escape(char: str) -> str:
    return "".join(f"_{b:02x}" for b in char.encode())
