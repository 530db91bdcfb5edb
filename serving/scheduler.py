"""The scheduler: iteration-level batching under a policy; the contract toward any engine.

``schedule(now) -> SchedulerOutput`` decides one iteration; ``update_from_output(out, ...)`` applies what the
engine did. The policy owns every fairness decision (who is next, what is charged) and the engine behaviour
(chunked prefill, admission cadence, KV reservation, adaptive batching); the scheduler never asks which policy
it runs.

Per-iteration work is O(clients + prefilling requests), not O(batch): the decoding sequences advance together
and are tracked in aggregate by serving.batch.DecodeSet; a request's own counters are brought up to date when it
finishes, is evicted, or an engine asks for the batch (``batch()``, ``SchedulerOutput.decodes``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from serving.batch import DecodeSet
from serving.engine.profiles import Profile
from serving.policies.base import Policy
from serving.predictors import MoPE
from serving.request import Request, RequestError


FAIR_PREEMPT_CHECK_STEPS = 16  # while a head request waits for KV room, fair preemption looks this often


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
    def __init__(self, policy: Policy, profile: Profile, predictor: MoPE | None = None):
        self.policy = policy
        self.b = policy.behaviour
        self.profile = profile
        self.predictor = predictor or MoPE()
        self.running: dict[int, Request] = {}     # rid -> request, admission order
        self.prefilling: list[Request] = []       # running requests still in prefill, admission order
        self.dec = DecodeSet(profile.block_tokens)
        self.pre_kv = 0                           # KV tokens held by the prefilling requests
        self.running_by_client: dict[str, int] = defaultdict(int)
        self.kv_capacity = profile.kv_capacity_tokens
        self.reserved = 0                         # tokens reserved by running requests
        self.decode_iters = 0                     # decode iterations since the last admission check
        self.decode_gpu = 0.0                     # GPU-seconds attributed to each decoding sequence so far (unweighted)
        self.budget = self.b.token_budget         # current token budget (adaptive)
        self.preemptions = 0
        self.finished: list[Request] = []
        self.gpu_used: dict[str, float] = defaultdict(float)  # weighted GPU-seconds attributed per client
        self.w_of: dict[str, float] = {}          # client -> weight (a client has one)
        self._seq = 0

    # arrivals -----------------------------------------------------------------------------------
    def add_request(self, req: Request, now: float) -> None:
        first = self.policy.rep.get(req.client, req)  # the client's first request
        if first.weight != req.weight:
            raise RequestError(f"request {req.rid} ({req.client}): weight {req.weight} differs from the weight "
                               f"{first.weight} of the client's request {first.rid}; a client has one weight")
        self.w_of[req.client] = req.weight
        self.policy.add(req, now, self.running_by_client)

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
        bt = self.profile.block_tokens
        return int(math.ceil(tokens / bt)) * bt

    def _reservation(self, req: Request) -> int:
        out = req.max_output if self.b.reserve == "full" else \
            min(max(req.predicted_output * self.b.reserve_factor, 1.0), req.max_output)
        return self._blocks(req.prompt_tokens + out)

    @property
    def kv_total(self) -> int:
        """KV-cache tokens held now (token granular)."""
        return self.dec.kv() + self.pre_kv

    def kv_used(self) -> int:
        """KV-cache tokens held now (block granular)."""
        bt = self.profile.block_tokens
        return (self.dec.kv_blocks() + sum(-(-r.prefilled // bt) for r in self.prefilling)) * bt

    def batch(self) -> list[Request]:
        """The running requests in admission order, their counters brought up to date (O(batch))."""
        self.dec.requests()
        return list(self.running.values())

    # one iteration --------------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
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
            while room > 0 and self.policy.waiting and len(self.running) < self.b.max_batch:
                head = self.policy.peek()
                if not self._fits(head):
                    if self.b.fair_preempt and not evicted and self._fair_preempt(head, out, now):
                        evicted = True
                        continue
                    break
                r = self._admit(now)
                out.admitted.append(r)
                c = min(r.prefill_goal - r.prefilled, room)
                out.prefills.append((r, c))
                room -= c
        else:
            # the VTC artifact's engine: new requests are looked at every `admit_every` decode steps (or when
            # idle); admitted prompts are prefilled whole in an iteration of their own, pausing decodes
            if self.prefilling:
                out.prefills = [(r, r.prefill_goal - r.prefilled) for r in self.prefilling]
            elif self.policy.waiting and (not n_dec or self.decode_iters >= self.b.admit_every):
                self.decode_iters = 0
                while self.policy.waiting and len(self.running) < self.b.max_batch and self._fits(self.policy.peek()):
                    r = self._admit(now)
                    out.admitted.append(r)
                    out.prefills.append((r, r.prefill_goal - r.prefilled))
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

    def _fits(self, req: Request) -> bool:
        """Would the waiting request's reservation fit, with the prediction that admitting it now would use?"""
        self._predict(req)
        return self.reserved + self._reservation(req) <= self.kv_capacity

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
        self.reserved += self._reservation(r)
        if r.admitted is None:
            r.admitted = now
        self.policy.on_admit(r, now)
        return r

    def _fair_preempt(self, head: Request, out: SchedulerOutput, now: float) -> bool:
        """The head request waits for KV room while a client far ahead of it in the policy's order holds the
        batch: evict that client's newest request (recomputed later) if that lets the head in."""
        c = self.policy.preempt_candidate(head.client, self.running_by_client)
        if c is None:
            return False
        # the client's newest request that was never preempted: each request is recomputed at most once for
        # fairness, so the engine cannot thrash between two clients
        victim = next((r for r in reversed(self.running.values()) if r.client == c and not r.preemptions), None)
        if victim is None or self.reserved - self._reservation(victim) + self._reservation(head) > self.kv_capacity:
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
        if self.b.reserve == "full":
            return  # every admitted request holds a reservation for its whole output: it always fits

        bt = self.profile.block_tokens
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

    def _leave_decoding(self, r: Request) -> None:
        self.dec.remove(r)
        r.gpu_s += (self.decode_gpu - r.gpu_mark) / r.weight

    def _evict(self, r: Request, now: float) -> None:
        if r in self.dec:
            self._leave_decoding(r)
        else:
            self.prefilling.remove(r)
            self.pre_kv -= r.prefilled
        del self.running[r.rid]
        self._leave_batch(r)
        self.reserved -= self._reservation(r)
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
        if out.preempted:
            return 1
        if out.prefills:
            return self._prefill_steps(out)  # (an admission happens in the first of the folded iterations)
        if out.admitted:
            return 1
        if not out.decode:
            return 1
        k = self.dec.steps_to_next_finish()
        if self.policy.waiting:
            if self.b.chunked_prefill:
                if len(self.running) < self.b.max_batch and self._fits(self.policy.peek()):
                    return 1  # the head request could be admitted next iteration
                # otherwise nothing can be admitted before a request finishes (or one arrives: the caller stops
                # there), unless fair preemption makes room: it is looked at again every few steps
                if self.b.fair_preempt:
                    k = min(k, FAIR_PREEMPT_CHECK_STEPS)
            else:
                k = min(k, max(self.b.admit_every - self.decode_iters, 1))
        if self.b.reserve != "full":
            bt, n = self.profile.block_tokens, max(out.n_decode, 1)
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
        if k > 1 and self.b.reserve != "full":
            bt = self.profile.block_tokens
            grow = c + out.n_decode  # KV tokens added per iteration
            k = min(k, (self.kv_capacity - self.kv_total - len(self.running) * (bt - 1)) // grow)
        return max(int(k), 1)

    # results ----------------------------------------------------------------------------------
    def update_from_output(self, out: SchedulerOutput, now: float, dt: float) -> dict[str, int]:
        """Apply an iteration that ended at `now` and took `dt` seconds in total.

        Returns the output tokens emitted per client."""
        k = out.steps
        tokens: dict[str, int] = {}
        gpu: dict[str, float] = {}
        prefills = out.prefills
        # iteration time is attributed in proportion to the tokens each sequence processed in it
        pt = 0
        for _, c in prefills:
            pt += c
        total = float(k * (pt + out.n_decode)) or 1.0
        dec = self.dec
        if out.decode:
            dec.advance(k)
            share = dt * k / total  # each decoding sequence's part of the time
            self.decode_gpu += share
            w_of = self.w_of
            for c, n in dec.per_client.items():
                tokens[c] = n * k
                gpu[c] = share * n / w_of[c]
            if not prefills:
                self.decode_iters += k
        done: list[Request] = []
        for r, c in prefills:
            c *= k  # (more than one step only for the full-budget chunks of one long prompt)
            r.prefilled += c
            self.pre_kv += c
            g = dt * c / total / r.weight
            r.gpu_s += g
            client = r.client
            gpu[client] = gpu.get(client, 0.0) + g
            if r.prefilled >= r.prefill_goal:  # prefill complete: it emits a token and starts decoding
                if r.first_token is None:
                    r.first_token = now
                r.generated += 1
                tokens[client] = tokens.get(client, 0) + 1
                self.prefilling.remove(r)
                self.pre_kv -= r.prefilled
                if r.generated >= r.output_tokens:
                    done.append(r)
                else:
                    dec.add(r)
                    r.gpu_mark = self.decode_gpu
        self.policy.on_step(tokens, gpu, now)
        used = self.gpu_used
        for c, g in gpu.items():
            used[c] += g
        if self.b.adaptive and out.decode:
            self._adapt(dt / k, k, bool(out.preempted))
        for r in dec.pop_finished():
            r.gpu_s += (self.decode_gpu - r.gpu_mark) / r.weight
            done.append(r)
        if not done:
            return tokens
        if len(done) > 1:
            done.sort(key=lambda r: r.seq)
        for r in done:
            del self.running[r.rid]
            self._leave_batch(r)
            self.reserved -= self._reservation(r)
            r.finished = now
            self.finished.append(r)
            if r.expert_preds is not None:  # score the experts on what they said when the engine acted on it
                self.predictor.observe(r.client, r.prompt_tokens, r.output_tokens, r.expert_preds)
            else:
                self.predictor.observe(r.client, r.prompt_tokens, r.output_tokens)
            self.policy.on_finish(r, now)
        return tokens

    # requests that end early, and engines that report per request ----------------------------------------------
    def release(self, req: Request, now: float, completed: bool = False) -> bool:
        """Take a request out wherever it is, before the engine's own end for it: a waiting request leaves its
        client's queue uncharged; a running one leaves the batch charged for what it produced (its prompt at
        admission, its tokens and measured GPU time as they came), and what it produced becomes its output.
        completed=True: an engine that reports per request finished it (the predictor learns its length); False:
        it was cancelled (client gone, engine failed, shutdown). Call between iterations. Returns False when the
        request is neither waiting nor running (already finished or released)."""
        if req.rid not in self.running:
            return self.policy.remove(req, now)
        if req in self.dec:
            self._leave_decoding(req)
        else:
            self.prefilling.remove(req)
            self.pre_kv -= req.prefilled
        del self.running[req.rid]
        self._leave_batch(req)
        self.reserved -= self._reservation(req)
        req.output_tokens = req.generated   # settles charges made at the end (vtc-pred) on what was produced
        req.finished = now
        if completed and req.generated:
            self.finished.append(req)
            self.predictor.observe(req.client, req.prompt_tokens, req.generated, req.expert_preds)
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
