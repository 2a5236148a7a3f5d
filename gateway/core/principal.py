"""Who a generation is for: the user the fair share counts, the class metrics name, the key's limits.

The HTTP layer decides who a request comes from (a bearer key's entry in the
keys file, a signed session, or the client's address) without any I/O, and
hands admission a `Principal`. A key's `Principal` is built once, when the
keys file is read, and is the same object on every request with that key.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's limits; None means no limit. `weight` scales the key's fair share."""

    concurrent_requests: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    weight: float = 1.0
    # May requests set vLLM's `priority` (ordering only this user's own requests)?
    priority: bool = False
    # Does the OpenAI `user` field name a separate fair-share user under this key?
    split_by_user_field: bool = False

    def __post_init__(self) -> None:
        for name in ("concurrent_requests", "requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.weight > 0:
            raise ValueError("weight must be above 0")

    @property
    def any_quota(self) -> bool:
        """Whether anything here is counted per key (concurrency or a rate)."""
        return any(v is not None for v in (self.concurrent_requests, self.requests_per_minute, self.tokens_per_minute))


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Principal:
    """The one a request is for.

    `user` is the fair-share user (never a raw key or session id: a key's user
    name from the keys file, or an opaque digest); `user_class` is a label from
    a small fixed set, safe for metrics; `quota` names the key whose `limits`
    are counted (None: nothing is counted).
    """

    user: str
    user_class: str
    limits: Limits = field(default=NO_LIMITS)
    quota: str | None = None

    @property
    def admin(self) -> bool:
        """Keys of the `admin` class may read the fairness state (`GET /admin/fairness`)."""
        return self.user_class == ADMIN_CLASS


ADMIN_CLASS = "admin"

# Who a generation is for when nobody said: a library user's app without the
# admission middleware. One user: first come, first served, as before fairness.
ANONYMOUS = Principal("anonymous", "anonymous")
