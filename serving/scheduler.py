"""The scheduler: iteration-level batching under a policy; the contract toward any engine.

``schedule(now) -> SchedulerOutput`` decides one iteration; ``update_from_output(out, ...)`` applies what the
engine did. The policy owns every fairness decision (who is next, what is charged) and the engine behaviour
(chunked prefill, admission cadence, KV reservation, adaptive batching); the scheduler never asks which policy
it runs.

Per-iteration work is O(prefilling requests + clients that both decode and wait), not O(batch) nor O(clients):
the decoding sequences advance together and are tracked in aggregate by serving.batch.DecodeSet; a request's own
counters are brought up to date when it finishes, is evicted, or an engine asks for the batch (``batch()``,
``SchedulerOutput.decodes``).

Decode charges reach the policy lazily. A client's decode tokens and GPU-seconds grow linearly in a few global
accumulators while its decoding set is unchanged, so they are delivered (``policy.on_step``) only when they can
matter: before the client's decoding set changes, before any policy event of the client (arrival, admission,
finish, eviction, cancellation), when the policy is about to choose it (``Policy.settle_owed``: owed charges only
raise a priority, so a stale key is a lower bound and only the clients that reach the top of the policy's order
are settled), before VTC's lift for every client that waits, before a fair-preemption look for every decoding
client, and on ``settle()`` (the daemon's counter reads, the end of a simulation). ``owed()`` reads what is owed
without delivering it (the simulator's samples). The sums delivered are those of the eager per-step charges (up
to float rounding).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from serving.batch import DecodeSet, PeakTable
from serving.engine.profiles import Profile
from serving.policies.base import Policy
from serving.predictors import MoPE
from serving.request import Request, RequestError


# while a head request waits for KV room, fair preemption looks after a finish, and otherwise once this many
# iterations have passed since its last look (a cadence of the engine, as S-LoRA's admission cadence; folded
# iterations stop where a look comes, so folding gives the schedule of running them one by one)
FAIR_PREEMPT_CHECK_STEPS = 16


@dataclass(slots=True)
class SchedulerOutput:
    """One iteration's work."""

    prefills: list[tuple[Request, int]] = field(default_factory=list)  # (request, tokens prefilled this iteration)
    decode: bool = False                                                # every decoding sequence produces a token
    n_decode: int = 0                                                   # how many sequences decode
    decode_kv: int = 0                                                  # KV tokens those sequences attend to
    admitted: list[Request] = field(default_factory=list)               # newly admitted this iteration
    preempted: list[Request] = field(default_factory=list)              # evicted to make KV room (recompute later)
    steps: int = 1                                                      # identical decode-only iterations folded in
    _batch: DecodeSet | None = field(default=None, repr=False)

    @property
    def decodes(self) -> list[Request]:
        """The decoding requests, synced (O(batch): for engines that need identities, not the hot path).
        Valid between schedule() and update_from_output()."""
        return self._batch.requests() if self.decode and self._batch is not None else []

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decode


class Scheduler:
    """Iteration-level scheduler of one replica: `policy` orders the requests and owns the engine behaviour
    (policy.behaviour), `profile` is the execution-time model (used for predictions and GPU-time attribution),
    `predictor` predicts output lengths. attribute_gpu=False leaves GPU-second measurement to the caller
    (an engine that measures it reports through the policy, e.g. EquinoxPolicy.record_measured)."""

    def __init__(self, policy: Policy, profile: Profile, predictor: MoPE | None = None, attribute_gpu: bool = True):
        self.policy = policy
        self.b = policy.behaviour
        self.profile = profile
        self.predictor = predictor or MoPE()
        self.attribute_gpu = attribute_gpu
        self.bt = self.b.block_tokens             # KV allocation granularity (the engine's)
        self.kv_capacity = profile.kv_capacity_tokens
        self.running: dict[int, Request] = {}     # rid -> request, admission order
        self.prefilling: list[Request] = []       # running requests still in prefill, admission order
        self.dec = DecodeSet(self.bt)
        # the admission test's view of each decoding request (S-LoRA's _can_add_new_req): with s decode steps
        # run, remaining reserved output = F - s and tokens held = X + s; both fixed while it decodes
        self._peak = PeakTable()
        self._virtual: tuple[int, int] = (0, 0)   # the smallest (held, left) over the waiting heads ...
        self._virtual_key: tuple | None = None    # ... as of this policy heads version (and predictor version)
        self._blocked_entry: tuple[int, int] | None = None  # the head's (held, left) when it is the only candidate
        self.rejected: list[Request] = []         # refused at arrival by the policy's admission control
        # KV fits by construction (no preemption) when whole outputs are reserved token- or block-exactly
        self._kv_guaranteed = self.b.reserve == "full" and (self.b.admission == "sum" or self.bt == 1)
        bmt = self.b.batch_max_tokens
        self.batch_max_tokens = max(self.kv_capacity // 6, 2048 + 1024) if bmt < 0 else bmt  # 0: no limit
        self.pre_kv = 0                           # KV tokens held by the prefilling requests
        self.running_by_client: dict[str, int] = defaultdict(int)
        self.reserved = 0                         # tokens reserved by running requests
        self.decode_iters = 0                     # decode iterations since the last admission check
        self._since_look = FAIR_PREEMPT_CHECK_STEPS  # iterations since fair preemption last looked
        # GPU-seconds attributed to the decoding sequences so far (unweighted; Profile.split): a sequence that held
        # x + s KV tokens at each global decode step s it ran pays decode_gpu + x * decode_kv_coef + decode_kv_coef_s
        # accumulated over those steps
        self.decode_gpu = 0.0
        self.decode_kv_coef = 0.0
        self.decode_kv_coef_s = 0.0
        self.budget = self.b.token_budget         # current token budget (adaptive)
        self.preemptions = 0
        self.finished: list[Request] = []
        self.gpu_used: dict[str, float] = defaultdict(float)  # weighted GPU-seconds attributed per client
        self.last_gpu: dict[str, float] = {}      # the last update's attribution per client
        self.w_of: dict[str, float] = {}          # client -> weight (a client has one)
        self._seq = 0
        # lazy decode charges: per decoding client, (decode steps, decode_gpu, decode_kv_coef, decode_kv_coef_s)
        # when its charges were last delivered; what it is owed since is linear in their growth (module doc)
        self._mark: dict[str, tuple[int, float, float, float]] = {}
        self._extra: dict[str, list] = {}         # client -> [tokens, GPU-s] of its prefill chunks not delivered
        self._out_tokens: dict[str, int] = {}     # tokens delivered since update_from_output last returned
        self._out_gpu: dict[str, float] = {}      # weighted GPU-seconds delivered since then
        self._now = 0.0                           # the time of the last call that can deliver charges
        policy.settle_owed = self._settle_owed

    # arrivals -----------------------------------------------------------------------------------
    def add_request(self, req: Request, now: float) -> bool:
        """A request arrives; False if the policy's admission control rejected it (req.rejected is set)."""
        first = self.policy.rep.get(req.client, req)  # the client's first request
        if first.weight != req.weight:
            raise RequestError(f"request {req.rid} ({req.client}): weight {req.weight} differs from the weight "
                               f"{first.weight} of the client's request {first.rid}; a client has one weight")
        self.check_servable(req)
        self.w_of[req.client] = req.weight
        if not self.policy.accept(req, now):
            req.rejected = True
            self.rejected.append(req)
            return False
        if (self._mark or self._extra) and not self.policy.queues.get(req.client):
            # the lift (when the client's queue becomes non-empty) reads the counters of every waiting client and
            # of the arriving one
            self._settle_waiting(now, req.client)
        self.policy.add(req, now, self.running_by_client)
        return True

    def check_servable(self, req: Request) -> None:
        """Refuse a request this engine could never admit, even alone (it would wait forever)."""
        cap, b = self.kv_capacity, self.b
        total = req.prompt_tokens + req.max_output
        if b.admission == "slora":
            room = cap - b.adapter_kv_tokens
            ok = total < room
        else:
            room = cap
            ok = self._blocks(total) <= room
        if not ok:
            raise RequestError(f"request {req.rid} ({req.client}): {req.prompt_tokens}+{req.max_output} tokens can "
                               f"never fit the KV cache of {room} tokens")
        if self.batch_max_tokens and req.prompt_tokens > self.batch_max_tokens:
            raise RequestError(f"request {req.rid} ({req.client}): prompt of {req.prompt_tokens} tokens exceeds the "
                               f"engine's batch_max_tokens {self.batch_max_tokens}")

    def _predict(self, r: Request) -> float:
        """MoPE's output prediction for a waiting request, as it would be made now (recomputed only when the
        predictor has learned something since it was last made)."""
        pm = self.predictor
        v = getattr(pm, "version", None)
        if v is None or r.pred_version != v:
            if isinstance(pm, MoPE):
                r.expert_preds = pm.predict_experts(r.client, r.prompt_tokens)
                r.predicted_output = max(1.0, pm.combine(r.expert_preds))
            else:
                r.predicted_output = max(1.0, pm.predict_output(r.client, r.prompt_tokens))
            r.pred_version = -1 if v is None else v
        return r.predicted_output

    @property
    def has_work(self) -> bool:
        return bool(self.running) or self.policy.waiting > 0

    # KV accounting --------------------------------------------------------------------------------
    def _blocks(self, tokens: float) -> int:
        bt = self.bt
        return int(math.ceil(tokens / bt)) * bt

    def _reserved_output(self, req: Request) -> int:
        """Output tokens the engine holds KV for: max_new_tokens, or the padded prediction (at least one more
        than generated, at most max_new_tokens)."""
        if self.b.reserve == "full":
            return req.max_output
        out = int(math.ceil(max(req.predicted_output * self.b.reserve_factor, 1.0)))
        return min(max(out, req.generated + 1), req.max_output)

    def _reservation(self, req: Request) -> int:
        return self._blocks(req.prompt_tokens + self._reserved_output(req))

    def slora_need(self, extra: list[tuple[int, int]]) -> int:
        """S-LoRA's admission test (slora/server/router/req_queue.py, _can_add_new_req): with every request as
        (tokens held, reserved output still to come), sorted by the latter descending, the KV the batch will
        need at its peak is max_k(left_k * k + sum_{i<=k} held_i) (request k finishes while the k-1 before it
        still grow). `extra`: (held, left) of requests not decoding yet (prefilling, candidates)."""
        return self._peak.need(self.dec.steps, extra)

    def _slora_entry(self, r: Request) -> tuple[int, int]:
        """(held, left) of a request that has not started decoding, as S-LoRA counts a candidate:
        (input + 1, max_new_tokens - 1) for a new one; a recomputed one holds its generated tokens too."""
        return r.prompt_tokens + r.generated + 1, self._reserved_output(r) - r.generated - 1

    def _start_decoding(self, r: Request, now: float) -> None:
        c = r.client
        if c in self._mark:
            self._settle((c,), now)   # its charges so far at its old decoding set
        else:
            self._mark[c] = (self.dec.steps, self.decode_gpu, self.decode_kv_coef, self.decode_kv_coef_s)
        self.dec.add(r)
        r.gpu_mark = (self.decode_gpu, self.decode_kv_coef, self.decode_kv_coef_s)
        if self.b.admission == "slora":
            # left = R - generated_now - 1 = (R - generated + dstart - 1) - steps; held = kv + 1
            self._peak.set(r.rid, self._reserved_output(r) - r.generated + r.dstart - 1,
                           r.prefilled + r.decoded - r.dstart + 1)

    def _stop_decoding(self, r: Request, now: float) -> None:
        c = r.client
        self._settle((c,), now)      # its charges so far at its old decoding set
        self.dec.remove(r)
        self._peak.pop(r.rid)
        if c not in self.dec.per_client:
            del self._mark[c]

    @property
    def kv_total(self) -> int:
        """KV-cache tokens held now (token granular)."""
        return self.dec.kv() + self.pre_kv

    def kv_used(self) -> int:
        """KV-cache tokens held now (block granular)."""
        bt = self.bt
        return (self.dec.kv_blocks() + sum(-(-r.prefilled // bt) for r in self.prefilling)) * bt

    def batch(self) -> list[Request]:
        """The running requests in admission order, their counters brought up to date (O(batch))."""
        self.dec.requests()
        return list(self.running.values())

    # one iteration --------------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        self._now = now
        out = SchedulerOutput(_batch=self.dec)
        n_dec = len(self.dec)
        if self.b.chunked_prefill:
            # stall-free: every decode runs; prefill chunks fill the rest of the token budget
            out.decode = n_dec > 0
            room = max(self.budget - n_dec, 0)
            for r in self.prefilling:
                if room <= 0:
                    break
                c = min(r.prefill_goal - r.prefilled, room)
                out.prefills.append((r, c))
                room -= c
            evicted = False
            round_tokens = 0
            while room > 0 and self.policy.waiting and len(self.running) < self.b.max_batch:
                head = self.policy.peek()
                if not self._fits(head, round_tokens):
                    if self.b.fair_preempt and not evicted and self._since_look >= FAIR_PREEMPT_CHECK_STEPS:
                        self._since_look = 0
                        if self._fair_preempt(head, out, now):
                            evicted = True
                            continue
                    break
                r = self._admit(now)
                round_tokens += r.prefill_goal
                out.admitted.append(r)
                c = min(r.prefill_goal - r.prefilled, room)
                out.prefills.append((r, c))
                room -= c
        else:
            # the VTC artifact's engine (S-LoRA router, manager._step): when idle, or once `admit_every` decode
            # steps have passed since the last admission, the policy's head requests are admitted while they pass
            # the KV test (and batch_max_tokens), and prefilled whole in an iteration of their own that pauses
            # decodes; when nothing could be admitted the engine decodes and tries again at the next step
            if self.prefilling:
                out.prefills = [(r, r.prefill_goal - r.prefilled) for r in self.prefilling]
            elif self.policy.waiting and (not n_dec or self.decode_iters >= self.b.admit_every):
                round_tokens = 0
                while self.policy.waiting and len(self.running) < self.b.max_batch and \
                        self._fits(self.policy.peek(), round_tokens):
                    r = self._admit(now)
                    round_tokens += r.prefill_goal
                    out.admitted.append(r)
                    out.prefills.append((r, r.prefill_goal - r.prefilled))
                if out.admitted:
                    self.decode_iters = 0
            if not out.prefills:
                out.decode = n_dec > 0
        self._make_room(out, now)
        if out.empty and self.running:
            # the prompts admitted for a prefill-only iteration were evicted again to make KV room: decode instead
            out.decode = len(self.dec) > 0
            self._make_room(out, now)
        if out.decode:
            out.n_decode = len(self.dec)
            out.decode_kv = self.dec.kv()
        return out

    def _fits(self, req: Request, round_tokens: int = 0) -> bool:
        """Would the waiting request pass the engine's admission test now (with the prediction that admitting it
        now would use)? `round_tokens`: prompt tokens already admitted in this prefill batch."""
        b = self.b
        if b.reserve != "full":
            self._predict(req)  # (reserving max_new_tokens, the test does not depend on it: made at admission)
        if len(self.running) >= b.max_batch:
            return False
        if self.batch_max_tokens and round_tokens + req.prompt_tokens + req.generated > self.batch_max_tokens:
            return False
        if b.admission == "sum":
            return self.reserved + self._reservation(req) <= self.kv_capacity
        extra = [self._slora_entry(r) for r in self.prefilling]
        extra.append(self._slora_entry(req))
        clients = len(self.running_by_client) + (req.client not in self.running_by_client)
        return self.slora_need(extra) < self.kv_capacity - b.adapter_kv_tokens * clients

    def _admit(self, now: float) -> Request:
        r = self.policy.pop(now)
        self._predict(r)  # the prediction as of admission (fixed from here on: its reservation is released later)
        r.predicted_gpu_s, _, _ = MoPE.predict_resources(self.profile, r.prompt_tokens, r.predicted_output,
                                                         len(self.running), self.kv_total)
        r.prefill_goal = r.prompt_tokens + r.generated  # after a preemption the generated tokens are recomputed
        r.gpu_s = 0.0
        self._seq += 1
        r.seq = self._seq
        self.running[r.rid] = r
        self.prefilling.append(r)
        self.running_by_client[r.client] += 1
        r.reserved_kv = self._reservation(r)  # fixed for this residency (a predicted one does not follow it)
        self.reserved += r.reserved_kv
        if r.admitted is None:
            r.admitted = now
        self.policy.on_admit(r, now)
        return r

    def _admission_possible(self) -> bool:
        """Could some request be admitted at the next iteration? While decodes run, a counter-based policy's
        head may change (counters grow), so unless the policy's head is fixed, every waiting client's head
        counts; the KV test only loosens when a request finishes, so False holds until then."""
        pol = self.policy
        self._blocked_entry = None
        if len(self.running) >= self.b.max_batch:
            return False
        if not pol.head_moves_on_decode:
            return self._fits(pol.peek())
        head = pol.peek()
        if head.client not in self.dec.per_client:
            # the head's client decodes nothing, so decodes charge it nothing: its priority stays while every
            # other waiting client's can only rise (charges never lower one), so until a finish, an arrival or
            # an admission the head stays the head, and it alone is tested
            self._blocked_entry = self._slora_entry(head) if self.b.admission == "slora" else None
            return self._fits(head)
        if self.b.admission == "sum":
            return any(self._fits(q[0]) for q in pol.queues.values() if q)
        # S-LoRA's need grows with a candidate's held and remaining tokens: if the smallest of each (over all
        # heads, as if its client already ran) does not fit, no head does. The two minima change only when a
        # head does (or, reserving predictions, when the predictor learns): kept until then
        key = (pol.heads_version, None if self.b.reserve == "full" else getattr(self.predictor, "version", None))
        if self._virtual_key != key:
            heads = [q[0] for q in pol.queues.values() if q]
            if self.b.reserve != "full":
                for h in heads:
                    self._predict(h)
            self._virtual = (min(h.prompt_tokens + h.generated + 1 for h in heads),
                             min(self._reserved_output(h) - h.generated - 1 for h in heads))
            self._virtual_key = key
        held, left = self._virtual
        extra = [self._slora_entry(r) for r in self.prefilling] + [(held, left)]
        return self.slora_need(extra) < self.kv_capacity - self.b.adapter_kv_tokens * len(self.running_by_client)

    def _blocked_steps(self) -> int:
        """With S-LoRA's test, decode steps during which no waiting request can pass it (after
        _admission_possible() said none passes now).

        Sorted by remaining output, a decoding request's term of the peak formula, left_k * k + sum_{i<=k}
        held_i, changes per decode step by minus the number of extra entries (prefilling requests, the
        candidate) sorted before it: its own left falls by one for each of its k places, and the held tokens of
        the k - i decoding requests up to it rise by one each. An extra entry's term rises by the decoding
        requests before it. Decoding requests keep their order among themselves; where one's remaining output
        passes an extra entry's the two are tied at that step, and the order of a tie does not change the
        maximum (module PeakTable). So the need falls by at most len(extra) per step, and stays at or above the
        room for (need - room) // len(extra) more steps."""
        if self.b.admission != "slora" or not self._peak:
            return 1 << 30
        pol = self.policy
        if self._blocked_entry is not None:
            held, left = self._blocked_entry   # the head stays the head (_admission_possible)
        elif pol.head_moves_on_decode:
            held, left = self._virtual
        else:
            held, left = self._slora_entry(pol.peek())
        extra = [self._slora_entry(r) for r in self.prefilling] + [(held, left)]
        room = self.kv_capacity - self.b.adapter_kv_tokens * len(self.running_by_client)  # the largest it can be
        return max(1, (self.slora_need(extra) - room) // len(extra) + 1)

    def _fair_preempt(self, head: Request, out: SchedulerOutput, now: float) -> bool:
        """The head request waits for KV room while a client far ahead of it in the policy's order holds the
        batch: evict that client's newest request (recomputed later) if that lets the head in."""
        self.settle(now)   # the policy compares the priorities of the running clients
        c = self.policy.preempt_candidate(head.client, self.running_by_client)
        if c is None:
            return False
        # the client's newest request that was never preempted: each request is recomputed at most once for
        # fairness, so the engine cannot thrash between two clients
        victim = next((r for r in reversed(self.running.values()) if r.client == c and not r.preemptions), None)
        if victim is None or self.reserved - victim.reserved_kv + self._reservation(head) > self.kv_capacity:
            return False
        self._preempt(victim, out, now)
        return True

    def _preempt(self, victim: Request, out: SchedulerOutput, now: float) -> None:
        """Evict a running request and take it out of this iteration's work."""
        self._evict(victim, now)
        out.prefills = [(r, c) for r, c in out.prefills if r is not victim]
        out.admitted = [r for r in out.admitted if r is not victim]
        out.preempted.append(victim)

    def _make_room(self, out: SchedulerOutput, now: float) -> None:
        """Preempt the latest-admitted requests while this iteration would overflow the KV cache."""
        if self._kv_guaranteed:
            return  # every admitted request holds a reservation for its whole output: it always fits

        bt = self.bt
        ahead = 1 if out.decode else 0
        grow_total = sum(c for _, c in out.prefills) + ahead * len(self.dec)
        if self.kv_total + grow_total + len(self.running) * (bt - 1) <= self.kv_capacity:
            return  # even rounding every request up to a whole block, it fits

        def need() -> int:
            grow = {r.rid: c for r, c in out.prefills}
            pre = sum(-(-(r.prefilled + grow.get(r.rid, 0)) // bt) for r in self.prefilling)
            return (self.dec.kv_blocks(ahead) + pre) * bt

        while need() > self.kv_capacity and len(self.running) > 1:
            self._preempt(self.running[next(reversed(self.running))], out, now)
        if out.decode and not self.dec:
            out.decode = False

    def _leave_batch(self, r: Request) -> None:
        rbc = self.running_by_client  # only clients with requests running have an entry
        n = rbc[r.client] - 1
        if n:
            rbc[r.client] = n
        else:
            del rbc[r.client]

    def _leave_decoding(self, r: Request, now: float) -> None:
        self._stop_decoding(r, now)
        if self.attribute_gpu:
            self._settle_decode_gpu(r)

    def _evict(self, r: Request, now: float) -> None:
        if r.client in self._extra:
            self._settle((r.client,), now)  # the policy takes the request's measured GPU time back out
        if r in self.dec:
            self._leave_decoding(r, now)
        else:
            self.prefilling.remove(r)
            self.pre_kv -= r.prefilled
        del self.running[r.rid]
        self._leave_batch(r)
        self.reserved -= r.reserved_kv
        r.prefilled = 0   # recompute: its KV is dropped, prompt + generated tokens are prefilled again
        r.decoded = 0
        r.preemptions += 1
        self.preemptions += 1
        self.policy.on_evict(r)
        self.policy.requeue_front(r, self.running_by_client, now)

    def quiet_steps(self, out: SchedulerOutput) -> int:
        """How many identical iterations can be folded into this one (no decision in between).

        Decode-only iterations fold until a request finishes (or an admission point comes). With chunked prefill,
        iterations that give one long prompt a full-budget chunk also fold: no admission is possible while the
        chunk takes all the room, so until the prompt's last chunk (or a finish) every iteration is alike."""
        self._blocked_entry = None   # (set by _admission_possible for _blocked_steps, in this call only)
        if out.preempted:
            return 1
        if out.prefills:
            return self._prefill_steps(out)  # (an admission happens in the first of the folded iterations)
        if out.admitted:
            return 1
        if not out.decode:
            return 1
        k = self.dec.steps_to_next_finish()
        full = len(self.running) >= self.b.max_batch
        if self.policy.waiting:
            if self.b.chunked_prefill:
                if full:
                    pass   # the batch is full: no admission is tried before a finish
                elif self._admission_possible():
                    return 1  # a head request could be admitted next iteration
                else:
                    # nothing can be admitted before a request finishes (or one arrives: the caller stops there)
                    # or, with S-LoRA's test, before the decodes have advanced far enough; unless fair
                    # preemption makes room: it looks again when its cadence comes
                    k = min(k, self._blocked_steps())
                    if self.b.fair_preempt:
                        k = min(k, max(FAIR_PREEMPT_CHECK_STEPS - self._since_look, 1))
            elif self.decode_iters < self.b.admit_every:
                k = min(k, self.b.admit_every - self.decode_iters)  # until the next admission point
            elif full:
                pass   # the batch is full: no admission is tried before a finish
            elif self._admission_possible():
                return 1  # a head request passes the test now: it is admitted at the next iteration
            else:
                # blocked until a request finishes, a request arrives (the caller stops the fold there) or the
                # decodes have advanced far enough for S-LoRA's test
                k = min(k, self._blocked_steps())
        if not self._kv_guaranteed:
            bt, n = self.bt, max(out.n_decode, 1)
            # KV room for the fold: a cheap lower bound on the free space first, the exact one when it binds
            free = self.kv_capacity - self.kv_total - len(self.running) * (bt - 1)
            if free // n - bt < k:
                free = self.kv_capacity - self.kv_used()
            k = min(k, max(free // n - bt, 1))
        return max(int(k), 1)

    def _prefill_steps(self, out: SchedulerOutput) -> int:
        if not self.b.chunked_prefill or self.b.adaptive or len(out.prefills) != 1:
            return 1
        r, c = out.prefills[0]
        if c != self.budget - out.n_decode:
            return 1  # the chunk leaves room: an admission may come next iteration
        k = (r.prefill_goal - r.prefilled - 1) // c  # full chunks that leave the prompt unfinished
        if out.decode:
            k = min(k, self.dec.steps_to_next_finish())
        if k > 1 and not self._kv_guaranteed:
            bt = self.bt
            grow = c + out.n_decode  # KV tokens added per iteration
            k = min(k, (self.kv_capacity - self.kv_total - len(self.running) * (bt - 1)) // grow)
        return max(int(k), 1)

    # results ----------------------------------------------------------------------------------
    def update_from_output(self, out: SchedulerOutput, now: float, dt: float) -> dict[str, int]:
        """Apply an iteration that ended at `now` and took `dt` seconds in total.

        With attribute_gpu, `dt` is handed to the sequences physically (Profile.split, scaled to `dt`): prefill
        chunks their compute, decodes the shared weight read and their own KV reads; per client in
        `last_gpu` (weighted), per request in `Request.gpu_s` when it leaves the batch. Returns the output
        tokens per client delivered to the policy since the last call (decode charges are delivered lazily:
        module doc; ``settle()`` delivers the rest), and sets ``last_gpu`` to the GPU-seconds delivered with them."""
        k = out.steps
        self._now = now
        self._since_look += k
        prefills = out.prefills
        dec = self.dec
        attribute = self.attribute_gpu
        if attribute:
            parts, seq, coef, coef_j, scale = self._split(out, dt)
        if out.decode:
            s0 = dec.steps
            dec.advance(k)
            if attribute:
                # every decoding sequence pays seq, plus coef per KV token it held (x_r + s0) and coef_j: kept in
                # the accumulators, delivered per client when it matters (_settle)
                coef = coef * scale
                self.decode_gpu += seq * scale
                self.decode_kv_coef += coef
                self.decode_kv_coef_s += coef * s0 + coef_j * scale
            if not prefills:
                self.decode_iters += k
        done: list[Request] = []
        extra = self._extra    # prefill charges are delivered lazily too (_settle)
        for j, (r, c) in enumerate(prefills):
            c *= k  # (more than one step only for the full-budget chunks of one long prompt)
            r.prefilled += c
            self.pre_kv += c
            client = r.client
            ex = extra.get(client)
            if ex is None:
                ex = extra[client] = [0, 0.0]
            if attribute:
                g = parts[j] * scale / r.weight
                r.gpu_s += g
                ex[1] += g
            if r.prefilled >= r.prefill_goal:  # prefill complete: it emits a token and starts decoding
                if r.first_token is None:
                    r.first_token = now
                r.generated += 1
                ex[0] += 1
                self.prefilling.remove(r)
                self.pre_kv -= r.prefilled
                if r.generated >= r.output_tokens:
                    done.append(r)
                else:
                    self._start_decoding(r, now)
        if self.b.adaptive and out.decode:
            self._adapt(dt / k, k, bool(out.preempted))
        due = dec.due()
        if due:
            for r in due:
                self._stop_decoding(r, now)
                if attribute:
                    self._settle_decode_gpu(r)
                done.append(r)
        tokens, self.last_gpu = self.take_delivered()
        if not done:
            return tokens
        self._since_look = FAIR_PREEMPT_CHECK_STEPS   # a finish frees room: fair preemption looks at once
        if len(done) > 1:
            done.sort(key=lambda r: r.seq)
        for r in done:
            if r.client in extra:
                self._settle((r.client,), now)  # (a finish in prefill: one output token)
            del self.running[r.rid]
            self._leave_batch(r)
            self.reserved -= r.reserved_kv
            r.finished = now
            self.finished.append(r)
            if r.expert_preds is not None:  # score the experts on what they said when the engine acted on it
                self.predictor.observe(r.client, r.prompt_tokens, r.output_tokens, r.expert_preds)
            else:
                self.predictor.observe(r.client, r.prompt_tokens, r.output_tokens)
            self.policy.on_finish(r, now)
        return tokens

    # lazy decode charges (module doc) ------------------------------------------------------------
    def _deliver(self, tokens: dict[str, int], gpu: dict[str, float], now: float) -> None:
        """Hand charges to the policy and count them (gpu_used, and what update_from_output / settle return)."""
        self.policy.on_step(tokens, gpu, now)
        used, ot, og = self.gpu_used, self._out_tokens, self._out_gpu
        for c, n in tokens.items():
            ot[c] = ot.get(c, 0) + n
        for c, g in gpu.items():
            used[c] += g
            og[c] = og.get(c, 0.0) + g

    def _owed_by(self, c: str) -> tuple[int, float] | None:
        """(tokens, weighted GPU-seconds) owed to client c (decode since its mark, plus its prefill chunks), or
        None when nothing is."""
        m, ex = self._mark.get(c), self._extra.get(c)
        t, g = (0, 0.0) if ex is None else ex
        dec = self.dec
        if m is not None and m[0] != dec.steps:
            s0, u0, a0, b0 = m
            n = dec.per_client[c]
            t += n * (dec.steps - s0)
            if self.attribute_gpu:
                g += (n * (self.decode_gpu - u0 + self.decode_kv_coef_s - b0)
                      + dec.kv_client[c] * (self.decode_kv_coef - a0)) / self.w_of[c]
        elif ex is None:
            return None
        return t, g

    def _owing(self) -> list[str]:
        """The clients that may be owed something (decoding, or with prefill chunks not delivered)."""
        return list(dict.fromkeys([*self._mark, *self._extra]))

    def _settle(self, clients, now: float) -> None:
        """Deliver what is owed to these clients and move their marks to now."""
        mark, extra, attribute = self._mark, self._extra, self.attribute_gpu
        tokens: dict[str, int] = {}
        gpu: dict[str, float] = {}
        now_mark = (self.dec.steps, self.decode_gpu, self.decode_kv_coef, self.decode_kv_coef_s)
        for c in clients:
            o = self._owed_by(c)
            if o is None:
                continue
            if o[0]:
                tokens[c] = o[0]
            if attribute:
                gpu[c] = o[1]
            if c in mark:
                mark[c] = now_mark
            extra.pop(c, None)
        if tokens or gpu:
            self._deliver(tokens, gpu, now)

    def _settle_owed(self, client: str) -> bool:
        """Policy.settle_owed: deliver what is owed to the client now; whether anything was."""
        m = self._mark.get(client)
        if (m is None or m[0] == self.dec.steps) and client not in self._extra:
            return False   # (the cheap test: this runs before every decision)
        self._settle((client,), self._now)
        return True

    def _settle_waiting(self, now: float, also: str | None = None) -> None:
        """Deliver what is owed to the decoding clients that wait (and to `also` if it decodes)."""
        q = self.policy.queues
        owed = [c for c in self._owing() if c == also or q.get(c)]
        if owed:
            self._settle(owed, now)

    def settle(self, now: float | None = None) -> None:
        """Deliver every charge owed: the policy's counters and gpu_used are then current (call it before reading
        them between iterations). now: the time handed to the policy (default: the last one the scheduler was
        given)."""
        now = self._now if now is None else now
        if self._mark or self._extra:
            self._settle(self._owing(), now)

    def owed(self) -> list[tuple[str, int, float]]:
        """(client, tokens, weighted GPU-seconds) not yet delivered, per client that is owed any, without
        delivering them (for a reader of totals that must not move the policy's state, as the simulator's
        samples)."""
        out = []
        for c in self._owing():
            o = self._owed_by(c)
            if o is not None and (o[0] or o[1]):
                out.append((c, *o))
        return out

    def take_delivered(self) -> tuple[dict[str, int], dict[str, float]]:
        """The output tokens and weighted GPU-seconds per client delivered to the policy since update_from_output
        or this last returned them (for a caller that accumulates them, as the simulator does before a sample)."""
        tokens, self._out_tokens = self._out_tokens, {}
        gpu, self._out_gpu = self._out_gpu, {}
        return tokens, gpu

    def _split(self, out: SchedulerOutput, dt: float) -> tuple[list[float], float, float, float, float]:
        """The iteration's (or fold's) modelled time split physically (Profile.split, summed over the folded
        steps): (per prefill chunk, per decoding sequence, per KV token held at the first step, per sequence
        for the KV growth over the steps), and the factor that scales the modelled total to the `dt` the engine
        reports (1 for the simulator, up to rounding)."""
        p, k, n, kv0 = self.profile, out.steps, out.n_decode if out.decode else 0, out.decode_kv if out.decode else 0
        chunks = [(c, r.prefilled) for r, c in out.prefills]
        if k == 1:
            parts, seq, coef = p.split(chunks, n, kv0)
            coef_j = 0.0
        elif not chunks:
            parts = []
            seq, coef, coef_j = p.decode_split(n, kv0, k)
        else:  # full-budget chunks of one prompt beside the decodes (a few steps: summed one by one)
            (c, ctx0), = chunks
            part = seq = coef = coef_j = 0.0
            for j in range(k):
                (pj,), sj, cj = p.split([(c, ctx0 + j * c)], n, kv0 + j * n)
                part, seq, coef, coef_j = part + pj, seq + sj, coef + cj, coef_j + cj * j
            parts = [part]
        total = sum(parts) + n * (seq + coef_j) + coef * kv0
        return parts, seq, coef, coef_j, (dt / total if total > 0 else 0.0)

    def _settle_decode_gpu(self, r: Request) -> None:
        """Add what a request leaving the decoding set was attributed while it decoded (it is synced)."""
        u0, a0, b0 = r.gpu_mark
        x = r.prefilled + r.decoded - r.dstart  # its KV tokens minus the global step count (fixed while decoding)
        r.gpu_s += ((self.decode_gpu - u0) + x * (self.decode_kv_coef - a0) + (self.decode_kv_coef_s - b0)) / r.weight

    # requests that end early, and engines that report per request ----------------------------------------------
    def release(self, req: Request, now: float, completed: bool = False) -> bool:
        """Take a request out wherever it is, before the engine's own end for it: a waiting request leaves its
        client's queue uncharged; a running one leaves the batch charged for what it produced (its prompt at
        admission, its tokens and measured GPU time as they came), and what it produced becomes its output.
        completed=True: an engine that reports per request finished it (the predictor learns its length); False:
        it was cancelled (client gone, engine failed, shutdown). Call between iterations. Returns False when the
        request is neither waiting nor running (already finished or released)."""
        if req.rid not in self.running:
            if req.client in self._mark or req.client in self._extra:
                self._settle((req.client,), now)  # the policy re-keys the client
            return self.policy.remove(req, now)
        if req.client in self._extra:
            self._settle((req.client,), now)
        if req in self.dec:
            self._leave_decoding(req, now)
        else:
            self.prefilling.remove(req)
            self.pre_kv -= req.prefilled
        del self.running[req.rid]
        self._leave_batch(req)
        self.reserved -= req.reserved_kv
        req.output_tokens = req.generated   # settles charges made at the end (vtc-pred) on what was produced
        req.finished = now
        if completed and req.generated:
            self.finished.append(req)
            if req.expert_preds is not None:
                self.predictor.observe(req.client, req.prompt_tokens, req.generated, req.expert_preds)
            else:
                self.predictor.observe(req.client, req.prompt_tokens, req.generated)
        self.policy.on_finish(req, now)
        return True

    def record_progress(self, req: Request, tokens: int, gpu_s: float, now: float) -> None:
        """An engine the scheduler does not step (an upstream server that streams each request on its own, admitted
        through schedule() like any engine) produced `tokens` output tokens of a running request and used `gpu_s`
        measured GPU-seconds (unweighted) for it: both are charged to its client now, through the policy's
        on_step, as update_from_output charges a stepped engine's. The request stays running until release()."""
        if req.rid not in self.running or req in self.dec:
            raise RequestError(f"request {req.rid} ({req.client}): progress reported for a request that is not "
                               f"running under a per-request engine")
        if tokens < 0 or not gpu_s >= 0:
            raise RequestError(f"request {req.rid} ({req.client}): bad progress {tokens!r} tokens, {gpu_s!r} GPU-s")
        if tokens and req.first_token is None:
            req.first_token = now
        req.generated += tokens
        g = gpu_s / req.weight
        req.gpu_s += g
        if g:
            self.gpu_used[req.client] += g
        self.policy.on_step({req.client: tokens} if tokens else {}, {req.client: g} if g else {}, now)

    def _adapt(self, step_s: float, steps: int = 1, preempted: bool = False) -> None:
        """AIMD on the token budget: halve it when KV pressure forced a preemption, shrink it when steps exceed
        the TBT target, grow it while requests wait."""
        if preempted:
            self.budget = max(64, self.budget // 2)
        elif step_s > self.b.tbt_target_s:
            self.budget = max(64, int(self.budget * 0.8 ** steps))
        elif self.policy.waiting:
            self.budget = min(self.b.token_budget * 4, self.budget + 32 * steps)
