"""Who may use the server: the API key (where it comes from, how a request proves it) and the
Host names a request may carry.

The key: ``--api-key KEY`` or ``--api-key-file FILE`` (not both; either one wins over the
``PARSETUNE_API_KEY`` environment variable, which is read when neither is given). A key on argv is
visible to every user of the machine (``ps``); a file or the environment is not. An empty key from
any source is an error, never "no authentication" (``--api-key "$KEY"`` with KEY unset must not
open the server). A request proves it with ``Authorization: Bearer KEY`` (the scheme in any case),
compared in constant time over the key's UTF-8 bytes, so a non-ASCII key works.

The Host allow-list defends a key-less local server against DNS rebinding (a web page whose name
resolves to 127.0.0.1 would otherwise drive it from the user's browser): bound to a loopback
address, only ``localhost``, ``127.0.0.1`` and ``[::1]`` (any port) and the names given with
``--allowed-host`` (a reverse proxy's public name) are accepted; bound elsewhere, IP-address
literals too (a page can only send an IP literal as Host when it was itself loaded from that
address: no rebinding).
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from parsetune.errors import UserError

KEY_ENV = "PARSETUNE_API_KEY"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def resolve_api_key(flag: str | None, key_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The key the server requires (None: no key), from ``--api-key``, ``--api-key-file`` or
    ``PARSETUNE_API_KEY``, in that order; a UserError for an empty or unusable key."""
    environ = os.environ if environ is None else environ
    if flag is not None and key_file is not None:
        raise UserError("--api-key and --api-key-file: give one of them")
    if flag is not None:
        key, where = flag, "--api-key"
    elif key_file is not None:
        where = f"--api-key-file {key_file}"
        try:
            with open(key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{where}: cannot read the key ({getattr(err, 'strerror', None) or err})") from None
    elif KEY_ENV in environ:
        key, where = environ[KEY_ENV], KEY_ENV
    else:
        return None
    if not key:
        raise UserError(f"{where}: the API key is empty (an empty key would turn authentication off; give a key or leave it out)")  # fmt: skip
    if key != key.strip() or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise UserError(f"{where}: the API key has surrounding spaces or control characters, which an HTTP header cannot carry")  # fmt: skip
    return key


def bearer_matches(authorization: bytes | None, key: str) -> bool:
    """Whether an ``Authorization`` header value (raw bytes) is ``Bearer KEY`` (scheme in any case)."""
    scheme, _, token = (authorization or b"").strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(token.strip(), key.encode("utf-8"))


def is_loopback(host: str) -> bool:
    """Whether ``--host`` binds to this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without its port (``[::1]:8000`` -> ``::1``), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, _, port = header.partition(":")
    return name if port.isdigit() or not port else header


def host_allowed(header: str | None, bound_to_loopback: bool, allowed: frozenset[str]) -> bool:
    """Whether a request's Host header names this server (see the module's docstring)."""
    if not header:
        return False
    name = _host_name(header).rstrip(".")
    return name in LOOPBACK_NAMES or name in allowed or (not bound_to_loopback and _is_ip(name))


def normalise_allowed_hosts(names: list[str]) -> frozenset[str]:
    """``--allowed-host`` values as compared (lower case, no port); a UserError for one that is empty or has a port or a scheme."""  # fmt: skip
    out = set()
    for name in names:
        clean = name.strip().lower().strip("[]")
        if not clean or "/" in clean or (":" in clean and not _is_ip(clean)):
            raise UserError(f"--allowed-host {name!r}: expected a host name without scheme or port (e.g. parser.example.com)")  # fmt: skip
        out.add(clean.rstrip("."))
    return frozenset(out)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
