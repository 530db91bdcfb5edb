"""The scheduler: iteration-level batching under a policy; the contract toward any engine.

``schedule(now) -> SchedulerOutput`` decides one iteration; ``update_from_output(out, ...)`` applies what the
engine did. The policy owns every fairness decision (who is next, what is charged) and the engine behaviour
(chunked prefill, admission cadence, KV reservation, adaptive batching); the scheduler never asks which policy
it runs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from serving.engine.profiles import Profile
from serving.policies.base import Policy
from serving.predictors import MoPE
from serving.request import Request


@dataclass
class SchedulerOutput:
    """One iteration's work."""

    prefills: list[tuple[Request, int]] = field(default_factory=list)  # (request, tokens prefilled this iteration)
    decodes: list[Request] = field(default_factory=list)                # requests producing one token each
    admitted: list[Request] = field(default_factory=list)               # newly admitted this iteration
    preempted: list[Request] = field(default_factory=list)              # evicted to make KV room (recompute later)
    steps: int = 1                                                      # identical decode-only iterations folded in

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decodes


class Scheduler:
    def __init__(self, policy: Policy, profile: Profile, predictor: MoPE | None = None):
        self.policy = policy
        self.b = policy.behaviour
        self.profile = profile
        self.predictor = predictor or MoPE()
        self.running: list[Request] = []          # admission order
        self.running_by_client: dict[str, int] = defaultdict(int)
        self.kv_capacity = profile.kv_capacity_tokens
        self.reserved = 0                         # tokens reserved by running requests
        self.kv_total = 0                         # KV tokens held by running requests (token granular)
        self.decode_iters = 0                     # decode iterations since the last admission check
        self.budget = self.b.token_budget         # current token budget (adaptive)
        self.preemptions = 0
        self.finished: list[Request] = []
        self.gpu_used: dict[str, float] = defaultdict(float)  # weighted GPU-seconds attributed per client

    # arrivals -----------------------------------------------------------------------------------
    def add_request(self, req: Request, now: float) -> None:
        req.predicted_output = max(1.0, self.predictor.predict_output(req.client, req.prompt_tokens))
        self.policy.add(req, now, self.running_by_client)

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

    def kv_used(self) -> int:
        """KV-cache tokens held now (block granular)."""
        return sum(self._blocks(r.kv_tokens) for r in self.running)

    # one iteration --------------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        decodes, in_prefill = [], []
        for r in self.running:
            (in_prefill if r.prefilled < r.prefill_goal else decodes).append(r)
        if self.b.chunked_prefill:
            # stall-free: every decode runs; prefill chunks fill the rest of the token budget
            out.decodes = decodes
            room = max(self.budget - len(decodes), 0)
            for r in in_prefill:
                if room <= 0:
                    break
                c = min(r.prefill_target - r.prefilled, room)
                out.prefills.append((r, c))
                room -= c
            while room > 0 and self.policy.waiting and len(self.running) < self.b.max_batch:
                head = self.policy.peek()
                if not self._fits(head):
                    break
                r = self._admit(now)
                out.admitted.append(r)
                c = min(r.prefill_target - r.prefilled, room)
                out.prefills.append((r, c))
                room -= c
        else:
            # the VTC artifact's engine: new requests are looked at every `admit_every` decode steps (or when
            # idle); admitted prompts are prefilled whole in an iteration of their own, pausing decodes
            if in_prefill:
                out.prefills = [(r, r.prefill_target - r.prefilled) for r in in_prefill]
            elif self.policy.waiting and (not decodes or self.decode_iters >= self.b.admit_every):
                self.decode_iters = 0
                while self.policy.waiting and len(self.running) < self.b.max_batch and self._fits(self.policy.peek()):
                    r = self._admit(now)
                    out.admitted.append(r)
                    out.prefills.append((r, r.prefill_target - r.prefilled))
            if not out.prefills:
                out.decodes = decodes
        self._make_room(out)
        if out.empty and self.running:
            # the prompts admitted for a prefill-only iteration were evicted again to make KV room: decode instead
            out.decodes = [r for r in self.running if not r.in_prefill]
            self._make_room(out)
        return out

    def _fits(self, req: Request) -> bool:
        return self.reserved + self._reservation(req) <= self.kv_capacity

    def _admit(self, now: float) -> Request:
        r = self.policy.pop(now)
        # predict again at admission: the history has grown since the request arrived
        r.predicted_output = max(1.0, self.predictor.predict_output(r.client, r.prompt_tokens))
        batch_kv = sum(x.kv_tokens for x in self.running)
        r.predicted_gpu_s, _, _ = MoPE.predict_resources(self.profile, r.prompt_tokens, r.predicted_output,
                                                         len(self.running), batch_kv)
        r.prefill_goal = r.prompt_tokens + r.generated  # after a preemption the generated tokens are recomputed
        self.running.append(r)
        self.running_by_client[r.client] += 1
        self.reserved += self._reservation(r)
        if r.admitted is None:
            r.admitted = now
        self.policy.on_admit(r, now)
        return r

    def _make_room(self, out: SchedulerOutput) -> None:
        """Preempt the latest-admitted requests while this iteration would overflow the KV cache."""
        if self.b.reserve == "full":
            return  # every admitted request holds a reservation for its whole output: it always fits

        bt = self.profile.block_tokens
        grow_total = sum(c for _, c in out.prefills) + len(out.decodes)
        if self.kv_total + grow_total + len(self.running) * (bt - 1) <= self.kv_capacity:
            return  # even rounding every request up to a whole block, it fits

        def need() -> int:
            grow = {id(r): c for r, c in out.prefills}
            for r in out.decodes:
                grow[id(r)] = grow.get(id(r), 0) + 1
            return sum(-(-(r.prefilled + r.decoded + grow.get(id(r), 0)) // bt) for r in self.running) * bt

        while need() > self.kv_capacity and len(self.running) > 1:
            victim = self.running[-1]
            self._evict(victim)
            out.prefills = [(r, c) for r, c in out.prefills if r is not victim]
            out.decodes = [r for r in out.decodes if r is not victim]
            out.admitted = [r for r in out.admitted if r is not victim]
            out.preempted.append(victim)

    def _evict(self, r: Request) -> None:
        self.running.remove(r)
        self.kv_total -= r.kv_tokens
        self.running_by_client[r.client] -= 1
        self.reserved -= self._reservation(r)
        r.prefilled = 0   # recompute: its KV is dropped, prompt + generated tokens are prefilled again
        r.decoded = 0
        r.preemptions += 1
        self.preemptions += 1
        self.policy.requeue_front(r, self.running_by_client)

    def quiet_steps(self, out: SchedulerOutput) -> int:
        """How many identical decode-only iterations can be folded into this one (no decision in between)."""
        if out.prefills or not out.decodes or out.admitted or out.preempted:
            return 1
        k = min(r.output_tokens - r.generated for r in out.decodes)
        if self.policy.waiting:
            if self.b.chunked_prefill:
                if len(self.running) < self.b.max_batch and self._fits(self.policy.peek()):
                    return 1  # the head request could be admitted next iteration
                # otherwise nothing can be admitted before a request finishes (or one arrives: the caller stops there)
            else:
                k = min(k, max(self.b.admit_every - self.decode_iters, 1))
        if self.b.reserve != "full":
            free = self.kv_capacity - self.kv_used()
            k = min(k, max(free // max(len(out.decodes), 1) - self.profile.block_tokens, 1))
        return max(int(k), 1)

    # results ----------------------------------------------------------------------------------
    def update_from_output(self, out: SchedulerOutput, now: float, dt: float) -> dict[str, list]:
        """Apply an iteration that ended at `now` and took `dt` seconds in total.

        Returns the output tokens emitted per client: {client: [a request of the client, tokens]}."""
        k = out.steps
        tokens: dict[str, list] = {}
        gpu: dict[str, float] = defaultdict(float)
        # iteration time is attributed in proportion to the tokens each sequence processed in it
        total = float(sum(c for _, c in out.prefills) + k * len(out.decodes)) or 1.0
        for r, c in out.prefills:
            r.prefilled += c
            self.kv_total += c
            gpu[r.client] += dt * c / total / r.weight
            if r.prefilled >= r.prefill_goal:  # prefill complete: it emits a token
                self._emit(r, 1, now, tokens)
        for r in out.decodes:
            r.decoded += k
            gpu[r.client] += dt * k / total / r.weight
            n = min(k, r.output_tokens - r.generated)  # _emit, inlined on the hot path
            if n > 0:
                if r.first_token is None:
                    r.first_token = now
                r.generated += n
                t = tokens.get(r.client)
                if t is None:
                    tokens[r.client] = [r, n]
                else:
                    t[1] += n
        self.kv_total += k * len(out.decodes)
        for req, n in tokens.values():  # one charge per client (a client's requests share its weight)
            self.policy.on_tokens(req, n, now)
        if out.decodes and not out.prefills:
            self.decode_iters += k
        self.policy.on_iteration(gpu, now)
        for c, g in gpu.items():
            self.gpu_used[c] += g
        if self.b.adaptive and out.decodes:
            self._adapt(dt / k, k, bool(out.preempted))
        done = [r for r in self.running if r.generated >= r.output_tokens]
        for r in done:
            self.running.remove(r)
            self.running_by_client[r.client] -= 1
            self.reserved -= self._reservation(r)
            self.kv_total -= r.kv_tokens
            r.finished = now
            self.finished.append(r)
            self.predictor.observe(r.client, r.prompt_tokens, r.output_tokens)
            self.policy.on_finish(r, now)
        return tokens

    def _emit(self, r: Request, n: int, now: float, tokens: dict[str, list]) -> None:
        n = min(n, r.output_tokens - r.generated)
        if n <= 0:
            return
        if r.first_token is None:
            r.first_token = now
        r.generated += n
        if r.client in tokens:
            tokens[r.client][1] += n
        else:
            tokens[r.client] = [r, n]

    def _adapt(self, step_s: float, steps: int = 1, preempted: bool = False) -> None:
        """AIMD on the token budget: halve it when KV pressure forced a preemption, shrink it when steps exceed
        the TBT target, grow it while requests wait."""
        if preempted:
            self.budget = max(64, self.budget // 2)
        elif step_s > self.b.tbt_target_s:
            self.budget = max(64, int(self.budget * 0.8 ** steps))
        elif self.policy.waiting:
            self.budget = min(self.b.token_budget * 4, self.budget + 32 * steps)
