"""The keys file: one line per API key, naming its user, its class and its limits.

```
# KEY                USER    [NAME=VALUE ...]
sk-alice-7f3a...     alice   class=pro weight=2 concurrent_requests=16 requests_per_minute=600
sk-alice-old-19c2... alice   class=pro weight=2                 # the same user: keys rotate
sk-batch-88d0...     batch   tokens_per_minute=200000 priority=yes user_field=yes
sk-ops-5e61...       ops     class=admin
sk-bare-key-only
```

- USER is who the key is for: the fair share counts users (several keys may
  name one), and persistent conversations belong to them. Without it the user
  is `key-` and the first 12 hex digits of the key's SHA-256.
- `class` labels the metrics (a few names from a small set; default
  `default`); the `admin` class may read `GET /admin/fairness`.
- `concurrent_requests`, `requests_per_minute`, `tokens_per_minute` (prompt
  plus `max_tokens`, the unused part given back): the key's limits, unlimited
  unless given; `weight` (default 1): its fair share relative to others;
  `priority=yes`: its requests may set vLLM's `priority`, which orders the
  user's own waiting requests; `user_field=yes`: the OpenAI `user` field
  names a fair-share user of its own under this key (limits stay the key's).

A file of bare keys (the old `--api-key-file`) or of `KEY USER` lines (the old
`--users-file`) is a keys file as it is. Mistakes stop the gateway at start
with the file and line named, never at the first request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from gateway.core.principal import ANONYMOUS, Limits, Principal

DEFAULT_CLASS = "default"
SESSION_CLASS = "session"
# Classes the gateway gives to requests without a key: a key may not take them.
_RESERVED_CLASSES = {SESSION_CLASS, ANONYMOUS.user_class}
_CLASS = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_COUNTS = ("concurrent_requests", "requests_per_minute", "tokens_per_minute")
_SWITCHES = {"priority": "priority", "user_field": "split_by_user_field"}
_YES, _NO = {"yes", "true", "1", "on"}, {"no", "false", "0", "off"}

KeyEntry = tuple[str, Principal]


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_principal(
    key: str, user: str | None = None, user_class: str = DEFAULT_CLASS, limits: Limits | None = None
) -> Principal:
    """Who `key` is for; its limits are counted under an id made from its digest, never the key."""
    digest = key_digest(key).hex()
    return Principal(user or f"key-{digest[:12]}", user_class, limits or Limits(), quota=f"key-{digest[:16]}")


def shorthand_keys(keys: Iterable[str]) -> list[KeyEntry]:
    """`--api-key` keys: each its own user, in the default class, without limits."""
    entries = []
    for key in keys:
        if not key or key != key.strip() or any(c.isspace() for c in key):
            raise ValueError("API keys must be non-empty and hold no whitespace")
        entries.append((key, key_principal(key)))
    return entries


def read_keys_file(path: str | Path) -> list[KeyEntry]:
    """The entries of a keys file; ValueError naming the file and line for any mistake."""
    entries: list[KeyEntry] = []
    seen: set[str] = set()
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        words = _strip_comment(line.split())
        if not words:
            continue
        try:
            key, principal = _entry(words)
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from None
        if key in seen:
            raise ValueError(f"{path}:{number}: a key appears twice")
        seen.add(key)
        entries.append((key, principal))
    return entries


def _strip_comment(words: list[str]) -> list[str]:
    """The words before the first one that starts with `#` (a comment); a `#` inside a word stays."""
    for i, word in enumerate(words):
        if word.startswith("#"):
            return words[:i]
    return words


def _entry(words: list[str]) -> KeyEntry:
    key, rest = words[0], words[1:]
    user = rest.pop(0) if rest and "=" not in rest[0] else None
    user_class = DEFAULT_CLASS
    counts: dict[str, int] = {}
    switches: dict[str, bool] = {}
    weight = 1.0
    for word in rest:
        name, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=VALUE, got {word!r}")
        if name == "class":
            if not _CLASS.fullmatch(value) or value in _RESERVED_CLASSES:
                raise ValueError(f"class {value!r} is not a name of 1 to 32 letters, digits, '.', '_' or '-'")
            user_class = value
        elif name in _COUNTS:
            counts[name] = _positive_int(name, value)
        elif name == "weight":
            weight = _positive_float(name, value)
        elif name in _SWITCHES:
            switches[_SWITCHES[name]] = _switch(name, value)
        else:
            raise ValueError(
                f"unknown setting {name!r} (known: class, weight, {', '.join(_COUNTS)}, priority, user_field)"
            )
    limits = Limits(
        concurrent_requests=counts.get("concurrent_requests"),
        requests_per_minute=counts.get("requests_per_minute"),
        tokens_per_minute=counts.get("tokens_per_minute"),
        weight=weight,
        priority=switches.get("priority", False),
        split_by_user_field=switches.get("split_by_user_field", False),
    )
    return key, key_principal(key, user, user_class, limits)


def _positive_int(name: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise ValueError(f"{name} must be a number above 0, not {value!r}")
    return number


def _switch(name: str, value: str) -> bool:
    if value.lower() in _YES:
        return True
    if value.lower() in _NO:
        return False
    raise ValueError(f"{name} must be yes or no, not {value!r}")
