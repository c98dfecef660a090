# -*- test-case-name: tests.test_ledger -*-
"""What every caller holds, by account: connections, streams, sessions, tasks, subscriptions.

An *account* is whom limits are counted against: an API key (``key:NAME``), a client address on a
daemon without keys (``ip:ADDRESS``), or the one stdio client (``local``). Whatever a caller keeps
— a connection, an SSE stream, a WebSocket, a ``subscriptions/listen`` stream, a legacy session,
a task, a resource subscription, replay buffer bytes — takes a `Claim` here, whatever door it came
through, and gives it back when it ends. So:

- each budget is held to two caps: its total, and the share one account may hold, so that one
  key cannot take a whole budget and lock every other key (the admin's included) out; a caller
  over either is told so with `LimitExceeded` (HTTP 429 for its share, 503 for the total);
- reloading the key file ends at once everything a revoked key holds (`Ledger.end`): every claim
  with an ``end`` callback, and what the participants hold (the engine's calls in flight); a key
  whose scopes changed has them handed to what it keeps open (`Ledger.rescope`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import attrs

from mcpd.protocol.errors import LimitExceeded

# The kinds of things counted.
CONNECTION = "connections"
STREAM = "streams"
SESSION = "sessions"
TASK = "tasks"
SUBSCRIPTION = "subscriptions"
REPLAY = "replay bytes"
CALL = "calls"

# Whom a limit message addresses, by account prefix.
_WHO = {"key": "this API key", "ip": "this client address"}
# What a caller can do about each kind, once at its share.
_ADVICE = {
    CONNECTION: "close idle connections, or reuse one (HTTP keep-alive)",
    STREAM: "close a stream (SSE GET, /sse, WebSocket or subscriptions/listen) and retry",
    SESSION: "end sessions you no longer use (DELETE with their Mcp-Session-Id) and retry",
    TASK: "wait for running tasks to finish, or cancel some (tasks/cancel), and retry",
    SUBSCRIPTION: "unsubscribe from resources you no longer follow and retry",
    CALL: "wait for calls in flight to finish and retry",
}
RETRY_AFTER = 5

# Who is asked about an account: (account, peer) → whether it is to end.
Match = Callable[[str, str], bool]
# How a holder learns its key's new scopes: (scopes, narrowed).
Rescope = Callable[[frozenset[str], bool], object]


@attrs.frozen
class Limit:
    """The caps of one kind: in all (None: no cap), and per account (None: no share)."""

    total: int | None = None
    per_account: int | None = None


def share(total: int, percent: int) -> int:
    """An account's share of ``total``: ``percent`` of it, at least 1."""
    return max(1, total * percent // 100)


def who(account: str) -> str:
    """How a limit message names the caller."""
    return _WHO.get(account.partition(":")[0], "this client")


class Participant(Protocol):
    """Something that holds things per account without a claim each (the engine's calls in
    flight) and ends them when the ledger is told to."""

    def end_matching(self, match: Match, reason: str) -> int:
        """End what matching accounts hold; how many things ended."""

    def rescoped(self, account: str, scopes: frozenset[str], narrowed: bool) -> None:
        """A key's scopes changed (``narrowed``: it lost one)."""


class Claim:
    """One thing an account holds; `release` gives it back (idempotent)."""

    __slots__ = ("_end", "_rescope", "account", "amount", "kind", "ledger", "peer", "released")

    def __init__(
        self,
        ledger: Ledger,
        account: str,
        kind: str,
        amount: int,
        peer: str,
        end: Callable[[str], object] | None,
        rescope: Rescope | None,
    ) -> None:
        self.ledger = ledger
        self.account = account
        self.kind = kind
        self.amount = amount
        self.peer = peer
        self._end = end
        self._rescope = rescope
        self.released = False

    def release(self) -> None:
        """Give the claim back."""
        if not self.released:
            self.released = True
            self.ledger._released(self)

    def end(self, reason: str) -> None:
        """End what the claim stands for (its owner is told why), and give it back."""
        end = self._end
        self.release()
        if end is not None:
            end(reason)

    def rescope(self, scopes: frozenset[str], narrowed: bool) -> None:
        """Tell the holder its key's scopes changed (``narrowed``: it lost one)."""
        if self._rescope is not None and not self.released:
            self._rescope(scopes, narrowed)


class Ledger:
    """The claims of every account, their counts, and the limits they are held to."""

    def __init__(self, limits: Mapping[str, Limit] | None = None) -> None:
        self.limits: dict[str, Limit] = dict(limits or {})
        self.participants: list[Participant] = []
        # Claims refused, by reason (``streams_limit`` …), for /metrics and /stats.
        self.refused: collections.Counter[str] = collections.Counter()
        self._held: collections.Counter[tuple[str, str]] = collections.Counter()
        self._totals: collections.Counter[str] = collections.Counter()
        # Claims that can be ended or rescoped, by account (insertion-ordered sets).
        self._live: dict[str, dict[Claim, None]] = {}

    # -- counting -------------------------------------------------------------------------------

    def claim(
        self,
        account: str,
        kind: str,
        *,
        amount: int = 1,
        peer: str = "",
        end: Callable[[str], object] | None = None,
        rescope: Rescope | None = None,
        force: bool = False,
    ) -> Claim:
        """Hold ``amount`` of ``kind`` for ``account``; `LimitExceeded` if it would pass a cap
        (unless ``force``: the caller checked before starting what it now counts).

        ``end(reason)`` is how the holder is ended when its account is (a revoked key);
        ``rescope(scopes, narrowed)`` how it learns a key's new scopes.
        """
        if not force:
            self.check(account, kind, amount)
        self._held[account, kind] += amount
        self._totals[kind] += amount
        claim = Claim(self, account, kind, amount, peer, end, rescope)
        if end is not None or rescope is not None:
            self._live.setdefault(account, {})[claim] = None
        return claim

    def check(self, account: str, kind: str, amount: int = 1) -> None:
        """`LimitExceeded` if ``account`` may not take ``amount`` more of ``kind``."""
        limit = self.limits.get(kind)
        if limit is None:
            return
        # .get: a count not held is the usual case, and Counter's [] reaches it through a
        # Python-level __missing__.
        if limit.per_account is not None and self._held.get((account, kind), 0) + amount > limit.per_account:
            holding = f"{self._held[account, kind]} of at most {limit.per_account}"
            raise self.over_share(account, kind, limit.per_account, holding)
        if limit.total is not None and self._totals.get(kind, 0) + amount > limit.total:
            self.refused[f"{kind.replace(' ', '_')}_limit"] += 1
            raise LimitExceeded(
                f"Server busy: it holds {self._totals[kind]} {kind}, its limit of {limit.total}; retry later",
                limit=kind,
                maximum=limit.total,
                per_caller=False,
                retry_after=RETRY_AFTER,
            )

    def over_share(self, account: str, kind: str, maximum: int, holding: str) -> LimitExceeded:
        """The refusal of more ``kind`` to ``account``, at its share (``maximum``), counted
        among the refusals; ``holding`` says what it holds ("2 of at most 2")."""
        self.refused[f"{kind.replace(' ', '_')}_limit"] += 1
        return LimitExceeded(
            f"Too many {kind}: {who(account)} holds {holding}; {_ADVICE.get(kind, 'retry later')}",
            limit=kind,
            maximum=maximum,
            per_caller=True,
            retry_after=RETRY_AFTER,
        )

    def take(self, account: str, kind: str, amount: int) -> bool:
        """Count ``amount`` more of ``kind`` if no cap forbids it (for quantities such as
        bytes, given back with `give`); whether it was counted."""
        try:
            self.check(account, kind, amount)
        except LimitExceeded:
            return False
        self._held[account, kind] += amount
        self._totals[kind] += amount
        return True

    def give(self, account: str, kind: str, amount: int) -> None:
        """Give back what `take` counted."""
        self._uncount(account, kind, amount)

    def held(self, account: str, kind: str) -> int:
        """How much of ``kind`` ``account`` holds."""
        return self._held[account, kind]

    def total(self, kind: str) -> int:
        """How much of ``kind`` every account together holds."""
        return self._totals[kind]

    def holdings(self) -> dict[str, dict[str, int]]:
        """Every account's counts, for /stats."""
        result: dict[str, dict[str, int]] = {}
        for (account, kind), count in self._held.items():
            if count:
                result.setdefault(account, {})[kind] = count
        return result

    def _released(self, claim: Claim) -> None:
        self._uncount(claim.account, claim.kind, claim.amount)
        live = self._live.get(claim.account)
        if live is not None:
            live.pop(claim, None)
            if not live:
                del self._live[claim.account]

    def _uncount(self, account: str, kind: str, amount: int) -> None:
        key = (account, kind)
        left = self._held[key] - amount
        if left > 0:
            self._held[key] = left
        else:
            del self._held[key]
        total = self._totals[kind] - amount
        if total > 0:
            self._totals[kind] = total
        else:
            del self._totals[kind]

    # -- ending ---------------------------------------------------------------------------------

    def end(self, match: Match, reason: str) -> int:
        """End everything held by the accounts (and from the addresses) ``match`` picks: what
        the participants hold first (calls in flight), then every claim with an ``end``; how
        many things ended."""
        ended = sum(participant.end_matching(match, reason) for participant in self.participants)
        doomed = [claim for claims in list(self._live.values()) for claim in claims if match(claim.account, claim.peer)]
        for claim in doomed:
            if not claim.released:
                claim.end(reason)
                ended += 1
        return ended

    def end_accounts(self, accounts: Iterable[str], reason: str) -> int:
        """End everything the ``accounts`` hold (revoked keys)."""
        chosen = frozenset(accounts)
        return self.end(lambda account, _peer: account in chosen, reason) if chosen else 0

    def rescope(self, account: str, scopes: frozenset[str], narrowed: bool) -> None:
        """Hand a key's new scopes to what it keeps open; the participants decide what else
        follows (a key that lost a scope has its calls in flight cancelled)."""
        for participant in self.participants:
            participant.rescoped(account, scopes, narrowed)
        for claim in list(self._live.get(account, ())):
            claim.rescope(scopes, narrowed)


__all__ = ["CALL", "CONNECTION", "REPLAY", "SESSION", "STREAM", "SUBSCRIPTION", "TASK", "Claim", "Ledger", "Limit"]
