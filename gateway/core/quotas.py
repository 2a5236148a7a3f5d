"""Per-key limits: requests in flight, requests per minute, tokens per minute.

Rates are token buckets that hold one minute's allowance and refill
continuously, so a key may burst up to its per-minute figure and then goes
at the rate. Requests are counted when they are let in; tokens when the
prompt is known (prompt plus `max_tokens`, the most the request can cost),
and the part of `max_tokens` not generated is given back when it ends. Every
refusal names the limit it hit and when to come back.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.errors import LimitReached
from gateway.core.principal import Limits


@dataclass(slots=True)
class _Bucket:
    """`per_minute` units a minute, at most one minute's worth saved; may go below zero (debt)."""

    per_minute: int
    level: float
    updated: float

    def refill(self, now: float) -> float:
        if now > self.updated:
            self.level = min(float(self.per_minute), self.level + (now - self.updated) * self.per_minute / 60)
            self.updated = now
        return self.level

    def seconds_until(self, level: float) -> float:
        return max(0.0, level - self.level) * 60 / self.per_minute


class Quota:
    """One key's counters against its `Limits`."""

    __slots__ = ("_requests", "_tokens", "in_flight", "limits")

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.in_flight = 0
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        self._requests = None if rpm is None else _Bucket(rpm, float(rpm), now)
        self._tokens = None if tpm is None else _Bucket(tpm, float(tpm), now)

    def check_request(self, now: float, mean_hold: float) -> None:
        """Raise LimitReached if one more request may not start now (nothing is counted yet)."""
        limits = self.limits
        if limits.concurrent_requests is not None and self.in_flight >= limits.concurrent_requests:
            raise LimitReached("concurrent_requests", limits.concurrent_requests, retry_after=mean_hold)
        if self._requests is not None and self._requests.refill(now) < 1:
            raise LimitReached("requests_per_minute", self._requests.per_minute, self._requests.seconds_until(1))
        # Tokens are counted once the prompt is known; a key already in debt waits here.
        if self._tokens is not None and self._tokens.refill(now) <= 0:
            raise LimitReached("tokens_per_minute", self._tokens.per_minute, self._tokens.seconds_until(1))

    def take_request(self) -> None:
        self.in_flight += 1
        if self._requests is not None:
            self._requests.level -= 1

    def take_tokens(self, tokens: int, now: float) -> None:
        """Count `tokens` (prompt + max_tokens), or raise LimitReached if the minute's allowance cannot cover them.

        A request larger than a whole minute's allowance needs a full bucket, and leaves it in debt.
        """
        bucket = self._tokens
        if bucket is None:
            return
        need = min(tokens, bucket.per_minute)
        if bucket.refill(now) < need:
            raise LimitReached("tokens_per_minute", bucket.per_minute, bucket.seconds_until(need))
        bucket.level -= tokens

    def give_back_tokens(self, tokens: int) -> None:
        if self._tokens is not None and tokens > 0:
            self._tokens.level = min(float(self._tokens.per_minute), self._tokens.level + tokens)

    def end_request(self) -> None:
        self.in_flight -= 1


class Quotas:
    """The counters of every key with limits, created on its first request."""

    def __init__(self) -> None:
        self._by_key: dict[str, Quota] = {}

    def of(self, key: str | None, limits: Limits, now: float) -> Quota | None:
        if key is None or not limits.any_quota:
            return None
        quota = self._by_key.get(key)
        if quota is None:
            # Keys come from the keys file: a fixed, small set, so nothing here needs pruning.
            quota = self._by_key[key] = Quota(limits, now)
        return quota
