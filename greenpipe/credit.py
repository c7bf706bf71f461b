"""A worker's capacity shared among the webs connected to it (credit-based flow).

Each web may hold at most its credit of this worker's jobs unacknowledged;
the worker keeps the sum of what it promised within its capacity
(CONCURRENCY), so the jobs it holds from all webs together never exceed it,
whatever the number of webs. Credit moves to the webs that use it:

- A grant (CREDIT +n) is usable at once: it comes from capacity no one holds.
- A cut (CREDIT -n) is not: the web may have sent jobs against its old credit
  before it read the cut. Cut credit stays counted as the web's ("in doubt")
  until a PING from that web echoes the cut's sequence number; messages on one
  connection keep their order, so by then every job sent against the old
  credit has arrived.
- A new web gets READY once its share is free (a cut elsewhere confirmed, at
  most one of that web's heartbeats later), so it starts with its full share
  and its round-robin is exact from its first job, as with one web.
- With one web nothing moves: it has the whole capacity. With several, credit
  is only moved while some web is hungry (it holds all its credit, or waits
  for READY); then shares are max-min fair over what each web used since the
  last tick (doubled), so an idle web lends its share to a busy one, down to
  a floor of half an equal share: a burst from it then starts within its
  credit, and its round-robin stays exact. The floor is never more than
  what the capacity covers (0 when CONCURRENCY < 2 × webs).
- A web at credit 0 cannot show its need (it sends nothing). It counts as
  hungry once it has been dry PROBE_TICKS ticks, or as soon as another web
  left its credit unused for a tick; ties go to the web dry the longest.
  So with CONCURRENCY below the number of webs the credit takes turns, and
  a web with jobs waits at most about PROBE_TICKS ticks for some (issue 24).

Pure bookkeeping: no sockets, no clock (the worker calls `rebalance` on its
ticks and when a PING confirms a cut); tests/test_credit.py drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROBE_TICKS = 4  # ticks a web may sit at credit 0 before it counts as hungry


@dataclass(eq=False)
class Account:
    """One web's side of the bargain, as the worker keeps it."""

    key: bytes  # the connection's routing id
    credit: int = 0  # promised: the web may hold this many unacknowledged
    held: int = 0  # its jobs inside the worker now (running or queued)
    peak: int = 0  # the most it held since the last tick
    seq: int = 0  # the last CREDIT sequence number sent to it
    doubt: list[tuple[int, int]] = field(default_factory=list)  # (seq, cut)
    waiting: bool = True  # READY not sent yet
    gone: bool = False
    dry: int = 0  # ticks in a row at credit 0 (see PROBE_TICKS)
    granted: bool = False  # its credit grew in this window: not idle yet

    @property
    def reserved(self) -> int:
        """Capacity this web may be using now, at most."""
        promised = self.credit + sum(amount for _, amount in self.doubt)
        return max(promised, self.held)

    @property
    def hungry(self) -> bool:
        """Holds all its credit, or waits for READY, or has been dry too long."""
        if self.waiting:
            return True
        if self.credit == 0:
            return self.dry >= PROBE_TICKS
        return self.peak >= self.credit


def water_fill(
    capacity: int, demands: dict[bytes, int], first: dict[bytes, int] | None = None
) -> dict[bytes, int]:
    """Max-min fair shares of `capacity` (integers; the remainder to the largest).

    Among equal demands the highest `first` is served last, so it gets what
    is left when the capacity cannot give everyone a share.
    """
    shares: dict[bytes, int] = {}
    rank = first or {}
    left = capacity
    order = sorted(demands, key=lambda key: (demands[key], rank.get(key, 0)))
    for index, key in enumerate(order):
        share = min(demands[key], left // (len(order) - index))
        shares[key] = share
        left -= share
    if order and left > 0:
        shares[order[-1]] += left
    return shares


class Shares:
    """The worker's accounts: who was promised what, who holds what."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.accounts: dict[bytes, Account] = {}
        self._departed: list[Account] = []  # gone, with jobs still running
        self.held = 0  # jobs held now, from all webs
        self.most_held = 0  # the most held at once since start

    def free(self) -> int:
        used = sum(a.reserved for a in self.accounts.values())
        return self.capacity - used - sum(a.held for a in self._departed)

    def join(self, key: bytes) -> Account:
        account = self.accounts.get(key)
        if account is None:
            account = self.accounts[key] = Account(key)
        return account

    def leave(self, key: bytes) -> None:
        account = self.accounts.pop(key, None)
        if account is not None and account.held:
            account.gone = True
            self._departed.append(account)

    def started(self, account: Account) -> None:
        account.held += 1
        if account.held > account.peak:
            account.peak = account.held
        self.held += 1
        if self.held > self.most_held:
            self.most_held = self.held

    def finished(self, account: Account) -> None:
        account.held -= 1
        self.held -= 1
        if account.gone and not account.held:
            self._departed.remove(account)

    def applied(self, account: Account, seq: int) -> bool:
        """A PING says the web applied CREDIT `seq`; True if a cut became free."""
        before = len(account.doubt)
        account.doubt = [(s, n) for s, n in account.doubt if s > seq]
        return len(account.doubt) < before

    def rebalance(self, tick: bool = False) -> list[tuple[Account, int]]:
        """Decide cuts and grants; returns (account, change) to send, in order.

        An account leaving `waiting` gets (account, 0): send it READY with its
        credit. `tick` ends a usage window (peaks restart from what is held).
        """
        accounts = list(self.accounts.values())
        actions: list[tuple[Account, int]] = []
        # Credit left unused for a whole window may be what a dry web needs.
        idle = any(a.credit and not (a.peak or a.held or a.granted) for a in accounts)
        hungry = {a.key for a in accounts if a.hungry or (idle and not a.credit)}
        if hungry:
            if len(accounts) == 1:
                targets = {accounts[0].key: self.capacity}
            else:
                # An idle web keeps a floor (half an equal share, if there is
                # one), so a burst from it starts within its credit.
                floor = self.capacity // (2 * len(accounts))
                demands = {a.key: self.capacity if a.key in hungry
                           else max(floor, 2 * a.peak) for a in accounts}  # fmt: skip
                dry = {a.key: a.dry for a in accounts}
                targets = water_fill(self.capacity, demands, dry)
            slack = max(1, self.capacity // 20)
            for a in accounts:  # cuts first: they free capacity once confirmed
                excess = a.credit - targets[a.key]
                if excess >= slack and not a.waiting:
                    a.credit -= excess
                    a.seq += 1
                    a.doubt.append((a.seq, excess))
                    actions.append((a, -excess))
            free = self.free()
            for a in sorted(accounts, key=lambda a: not a.waiting):
                want = targets[a.key] - a.credit
                if want > 0 and free > 0:
                    grant = min(want, free)
                    a.credit += grant
                    a.granted = True
                    free -= grant
                    if not a.waiting:
                        a.seq += 1
                        actions.append((a, grant))
            nothing_coming = not any(a.doubt for a in accounts)
            for a in accounts:
                if a.waiting and (a.credit >= targets[a.key]
                                  or (nothing_coming and a.credit > 0)):  # fmt: skip
                    a.waiting = False
                    actions.append((a, 0))
        if tick:
            for a in accounts:
                a.peak = a.held
                a.dry = a.dry + 1 if a.credit == 0 and not a.waiting else 0
                a.granted = False
        return actions

    def unsent(self, account: Account, change: int) -> None:
        """A READY or CREDIT `change` from `rebalance` was not sent (queue full).

        Undone as if never decided, so the web's view and the books agree; the
        next rebalance decides again (an unsent cut booked as sent would let
        a later grant's sequence number clear it, and the worker overfill).
        """
        if change == 0:
            account.waiting = True
            return
        account.seq -= 1
        account.credit -= change
        if change < 0:
            account.doubt.pop()
