"""Run one policy on one workload through the engine simulator."""

from __future__ import annotations

from serving.engine.behaviour import EngineBehaviour, get_engine
from serving.engine.profiles import get_profile
from serving.engine.simulator import SimResult, Simulator
from serving.policies import make_policy
from serving.predictors import MoPE
from serving.request import Request
from serving.scheduler import Scheduler


def simulate(requests: list[Request], policy: str, profile: str = "a100-llama2-7b",
             behaviour: dict | None = None, policy_kw: dict | None = None, progress=None,
             engine: EngineBehaviour | str | None = None, sample_dt: float = 1.0) -> SimResult:
    """Simulate fresh copies of the requests (callers can reuse their list across policies).

    engine: the engine behaviour (a name, a behaviour file or an EngineBehaviour); None: the policy's own
    (the artifact's S-LoRA for the baselines, Equinox's engine for Equinox). behaviour: fields to change on it."""
    prof = get_profile(profile)
    pol = make_policy(policy, **(policy_kw or {}))
    if engine is not None:
        pol.behaviour = engine if isinstance(engine, EngineBehaviour) else get_engine(engine)
    if behaviour:
        pol.behaviour = pol.behaviour.replace(**behaviour)
    sched = Scheduler(pol, prof, MoPE())
    reqs = [r.fresh() for r in requests]
    return Simulator(sched, reqs, sample_dt=sample_dt).run(progress)
