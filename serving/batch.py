"""The decoding part of the running batch, kept in O(1) per iteration.

In every iteration either all decoding sequences produce a token or none do (chunked prefill runs every decode;
the VTC artifact's engine alternates prefill-only and decode-all iterations). So one global step counter ``steps``
says how far every decoding sequence has advanced: a request that joined at step ``r.dstart`` has produced
``steps - r.dstart`` more tokens than its fields say. Per-request fields are brought up to date (``sync``) only
when someone looks at the request: when it finishes, is evicted, or an engine asks for the batch.

The aggregates the scheduler needs every iteration are kept incrementally:
  * KV tokens held, ``kv() = sum(x_r) + n * steps`` with ``x_r = kv_r - steps`` fixed per member;
  * KV *blocks* held (block-granular, exact): with ``x_r = bt * q_r + m_r``, a member holds
    ``q_r + Q + c(m_r + R)`` blocks at ``steps = bt * Q + R``, where ``c(v)`` is 0, 1 or 2 as ``v`` is 0, in
    ``[1, bt]`` or above ``bt``; so a histogram of the residues ``m_r`` gives the total in O(bt) C-level work;
  * decoding sequences per client and the sum of their ``x_r`` (tokens and GPU time are charged per client,
    not per request; a client's KV tokens are ``kv_client[c] + per_client[c] * steps``);
  * a heap of the step at which each member finishes, so finishes are found in O(log n).
"""

from __future__ import annotations

import bisect
import heapq
import math

from serving.request import Request


class DecodeSet:
    def __init__(self, block_tokens: int):
        self.bt = block_tokens
        self.steps = 0                       # decode iterations run so far (global)
        self.members: dict[int, Request] = {}
        self.kv_base = 0                     # sum of x_r
        self.q_sum = 0                       # sum of q_r
        self.residues = [0] * block_tokens   # histogram of m_r
        self.per_client: dict[str, int] = {}
        self.kv_client: dict[str, int] = {}  # sum of x_r over the client's members
        self._fin: list[tuple[int, int, Request]] = []   # (step it finishes at, admission seq, request)

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, r: Request) -> bool:
        return r.rid in self.members

    # membership ---------------------------------------------------------------------------------
    def add(self, r: Request) -> None:
        """r's prefill is complete and its fields are current: it decodes from the next decode step on."""
        r.dstart = self.steps
        x = r.prefilled + r.decoded - self.steps
        q, m = divmod(x, self.bt)
        self.members[r.rid] = r
        self.kv_base += x
        self.q_sum += q
        self.residues[m] += 1
        self.per_client[r.client] = self.per_client.get(r.client, 0) + 1
        self.kv_client[r.client] = self.kv_client.get(r.client, 0) + x
        heapq.heappush(self._fin, (self.steps + r.output_tokens - r.generated, r.seq, r))

    def sync(self, r: Request) -> None:
        d = self.steps - r.dstart
        if d:
            r.decoded += d
            r.generated += d
            r.dstart = self.steps

    def remove(self, r: Request) -> None:
        """Take r out (finished or evicted), its fields brought up to date."""
        self.sync(r)
        del self.members[r.rid]
        x = r.prefilled + r.decoded - self.steps
        q, m = divmod(x, self.bt)
        self.kv_base -= x
        self.q_sum -= q
        self.residues[m] -= 1
        n = self.per_client[r.client] - 1
        if n:
            self.per_client[r.client] = n
            self.kv_client[r.client] -= x
        else:
            del self.per_client[r.client]
            del self.kv_client[r.client]
        # its heap entry goes stale; _live() skips it

    # steps --------------------------------------------------------------------------------------
    def advance(self, k: int) -> None:
        self.steps += k

    def _live(self) -> tuple[int, int, Request] | None:
        h = self._fin
        while h:
            _, seq, r = h[0]
            if r.rid in self.members and r.seq == seq:
                return h[0]
            heapq.heappop(h)
        return None

    def steps_to_next_finish(self) -> int:
        """Decode steps until the first member produces its last token (0 when one is done now)."""
        top = self._live()
        return top[0] - self.steps if top is not None else 0

    def due(self) -> list[Request]:
        """Members that have produced their last token, still members (the caller removes them), in finish-heap
        order; each is returned once."""
        h = self._fin
        if not h or h[0][0] > self.steps:
            return []  # nothing due (a stale entry at the top is due only if its step has come)
        done = []
        while True:
            top = self._live()
            if top is None or top[0] > self.steps:
                break
            if top[0] < self.steps:
                raise RuntimeError(f"request {top[2].rid} was decoded {self.steps - top[0]} steps past its last "
                                   f"token (the engine folded past a finish)")
            heapq.heappop(h)
            done.append(top[2])
        return done

    def pop_finished(self) -> list[Request]:
        """Members that have produced their last token, removed and synced."""
        done = self.due()
        for r in done:
            self.remove(r)
        return done

    # aggregates ---------------------------------------------------------------------------------
    def kv(self, ahead: int = 0) -> int:
        """KV tokens held by the members, `ahead` steps from now."""
        return self.kv_base + len(self.members) * (self.steps + ahead)

    def kv_blocks(self, ahead: int = 0) -> int:
        """KV blocks held by the members `ahead` steps from now (each member rounded up to whole blocks)."""
        n = len(self.members)
        if not n:
            return 0
        Q, R = divmod(self.steps + ahead, self.bt)
        blocks = self.q_sum + n * (Q + 1) + sum(self.residues[self.bt + 1 - R:]) if R else self.q_sum + n * (Q + 1)
        if R == 0:
            blocks -= self.residues[0]
        return blocks

    def requests(self) -> list[Request]:
        """The members, synced, in admission order."""
        rs = sorted(self.members.values(), key=lambda r: r.seq)
        for r in rs:
            self.sync(r)
        return rs


class PeakTable:
    """S-LoRA's admission test (_can_add_new_req) over the decoding requests, kept sorted between changes.

    Each decoding request is (F, X): with s global decode steps run, its reserved output still to come is F - s
    and its KV tokens X + s, both fixed while it decodes; sorted by F the order never changes, and the k-th
    term of the peak formula, left_k * k + sum_{i<=k} held_i, is F_k * k + sum_{i<=k} X_i: independent of s.
    So the sorted lists, the cumulative X, the terms and their prefix maximum change only when a request joins
    or leaves, and then only from its place in the order on: they are recomputed from the first changed place
    when next read (a request that leaves when its reservation is used up sorts last: nothing to recompute).
    A test with a few extra entries (prefilling requests, the candidate) costs a binary search and one pass over
    the decoders between extras. Ties in remaining output do not matter: within a tie the terms grow, and the
    last one counts them all. Plain lists: at batch sizes of tens to hundreds, numpy's per-call cost is larger
    than the work (measured: 27 us per rebuild against a few).
    """

    def __init__(self):
        self.entries: dict[int, tuple[int, int]] = {}   # rid -> (F, X)
        self._neg: list[int] = []     # -F, ascending (F descending): the sort order
        self._rid: list[int] = []     # rids in that order
        self._x: list[int] = []       # X in that order
        self._cum: list[int] = []     # cumulative X, valid up to len(_cum)
        self._terms: list[int] = []   # F_k * k + cumX_k, valid as _cum
        self._prefix: list[int] = []  # prefix maximum of the terms, valid as _cum

    def __len__(self) -> int:
        return len(self.entries)

    def _place(self, rid: int, f: int) -> int:
        neg, rids = self._neg, self._rid
        i = bisect.bisect_left(neg, -f)
        while rids[i] != rid:
            i += 1
        return i

    def _invalidate(self, i: int) -> None:
        if i < len(self._cum):
            del self._cum[i:], self._terms[i:], self._prefix[i:]

    def set(self, rid: int, f: int, x: int) -> None:
        if rid in self.entries:
            self.pop(rid)
        self.entries[rid] = (f, x)
        i = bisect.bisect_right(self._neg, -f)
        self._neg.insert(i, -f)
        self._rid.insert(i, rid)
        self._x.insert(i, x)
        self._invalidate(i)

    def pop(self, rid: int) -> None:
        e = self.entries.pop(rid, None)
        if e is not None:
            i = self._place(rid, e[0])
            del self._neg[i], self._rid[i], self._x[i]
            self._invalidate(i)

    def _refresh(self) -> None:
        cum, terms, prefix, neg, xs = self._cum, self._terms, self._prefix, self._neg, self._x
        k = len(cum)
        n = len(neg)
        if k == n:
            return
        c = cum[-1] if k else 0
        best = prefix[-1] if k else -math.inf
        for j in range(k, n):
            c += xs[j]
            t = c - neg[j] * (j + 1)
            cum.append(c)
            terms.append(t)
            if t > best:
                best = t
            prefix.append(best)

    def _behind(self, lo: int, hi: int, i: int, s: int) -> int:
        """The largest term of decoders lo..hi-1 with i extra entries sorted before them, without those entries'
        held tokens: each term gains i times the decoder's remaining output F - s."""
        terms, neg = self._terms, self._neg
        return max([terms[k] - i * (neg[k] + s) for k in range(lo, hi)])

    def need(self, steps: int, extra: list[tuple[int, int]]) -> int:
        """max_k(left_k * k + sum_{i<=k} held_i) over the decoding requests and `extra` (held, left) entries,
        sorted by left descending."""
        self._refresh()
        neg, cum_x, terms, prefix = self._neg, self._cum, self._terms, self._prefix
        n = len(neg)
        if not extra:
            return prefix[-1] if n else 0
        s = steps
        best = -math.inf
        held_before = 0     # held tokens of the extra entries sorted before
        prev = 0            # decoding requests sorted before the current extra entry
        i = 0               # extra entries sorted before
        for h, left in (sorted(extra, key=lambda e: -e[1]) if len(extra) > 1 else extra):
            m = bisect.bisect_left(neg, -(left + s))  # decoders with F - s > left
            if m > prev:  # decoders prev..m-1 have i extra entries sorted before them
                if i == 0:
                    seg = prefix[m - 1]
                else:
                    seg = self._behind(prev, m, i, s) + held_before
                if seg > best:
                    best = seg
            held_before += h
            t = left * (m + i + 1) + (cum_x[m - 1] + s * m if m else 0) + held_before
            if t > best:
                best = t
            prev = m
            i += 1
        if prev < n:
            seg = self._behind(prev, n, i, s) + held_before
            if seg > best:
                best = seg
        return int(best)
