"""Run one policy on one workload through the engine simulator."""

from __future__ import annotations

import dataclasses

from serving.engine.profiles import get_profile
from serving.engine.simulator import SimResult, Simulator
from serving.policies import make_policy
from serving.policies.base import EngineBehaviour
from serving.predictors import MoPE
from serving.request import Request
from serving.scheduler import Scheduler


def simulate(requests: list[Request], policy: str, profile: str = "a100-llama2-7b",
             behaviour: dict | None = None, policy_kw: dict | None = None, progress=None) -> SimResult:
    """Simulate fresh copies of the requests (callers can reuse their list across policies)."""
    prof = get_profile(profile)
    pol = make_policy(policy, **(policy_kw or {}))
    if behaviour:
        pol.behaviour = dataclasses.replace(pol.behaviour, **behaviour)
        EngineBehaviour.__post_init__(pol.behaviour)
    sched = Scheduler(pol, prof, MoPE())
    reqs = [r.fresh() for r in requests]
    return Simulator(sched, reqs).run(progress)
