"""API keys and the principals they stand for.

Keys are configured as hashes, never in plaintext: an entry is ``sha256:<hex>`` (or
``sha384``, ``sha512``, ``sha3_256``, ``sha3_512``), optionally named, ``alice=sha256:<hex>``.
A request's key is hashed with each configured algorithm and compared with every entry
in constant time, over the digests. The principal (the owner of what the key creates) is
the entry's name, or ``k_`` and the first 12 hex digits of the digest: short, stable,
and it never reveals the key. Two entries with one name (an old and a new key during a
rotation) are one principal.

With no keys configured the service is open, as in the embedded default: every caller is
the principal ``anonymous`` with the admin's view.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ANONYMOUS = "anonymous"
ALGORITHMS: tuple[str, ...] = ("sha256", "sha384", "sha512", "sha3_256", "sha3_512")
DEFAULT_ALGORITHM = "sha256"
KEY_PREFIX = "tlk_"
PRINCIPAL_MAX = 64
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner id of what it creates, and whether it sees everything."""

    id: str
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The owner filter of its reads: its own id, or None (everything) for an admin."""
        return None if self.admin else self.id


OPEN = Principal(ANONYMOUS, admin=True)


@dataclass(frozen=True)
class KeyEntry:
    principal: str
    algorithm: str
    digest: bytes
    admin: bool = False


def hash_key(key: str, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The settings entry of ``key``: ``<algorithm>:<hex digest>``."""
    return f"{algorithm}:{hashlib.new(algorithm, key.encode()).hexdigest()}"


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_key_entry(entry: str, *, admin: bool = False) -> KeyEntry:
    """``[name=]algorithm:hexdigest``; ValueError with a message for the operator."""
    name, sep, hashed = entry.rpartition("=")
    if sep and not _NAME.match(name):
        raise ValueError(f"key name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    algorithm, colon, hexdigest = hashed.partition(":")
    if not colon or algorithm not in ALGORITHMS:
        raise ValueError(
            "API keys are configured as hashes, '<algorithm>:<hex digest>' with algorithm "
            f"one of {', '.join(ALGORITHMS)} (got an entry starting {entry[:8]!r}); "
            "`trainlab keys new` makes a key and its entry, `trainlab keys hash` hashes "
            "an existing key"
        )
    size = hashlib.new(algorithm).digest_size
    if len(hexdigest) != 2 * size or not _HEX.match(hexdigest):
        raise ValueError(f"a {algorithm} digest is {2 * size} lowercase hex digits")
    principal = name if sep else f"k_{hexdigest[:12]}"
    return KeyEntry(principal, algorithm, bytes.fromhex(hexdigest), admin)


def parse_key_entries(users: Sequence[str], admins: Sequence[str]) -> tuple[KeyEntry, ...]:
    return tuple(
        [parse_key_entry(e) for e in users] + [parse_key_entry(e, admin=True) for e in admins]
    )


def authenticate(key: str, entries: Iterable[KeyEntry]) -> Principal | None:
    """The principal of ``key``, or None. Every entry is compared, hit or miss, so the
    time taken does not tell how far a guess got."""
    raw = key.encode("utf-8", "surrogateescape")
    digests = {a: hashlib.new(a, raw).digest() for a in {e.algorithm for e in entries}}
    found: KeyEntry | None = None
    for entry in entries:
        if hmac.compare_digest(digests[entry.algorithm], entry.digest) and (
            found is None or entry.admin
        ):
            found = entry
    return None if found is None else Principal(found.principal, admin=found.admin)
