"""Scheduling policies: a plug point (enum + registry). Adding one is one file and one registry line."""

from __future__ import annotations

import enum

from serving.policies.base import EngineBehaviour, Policy
from serving.policies.equinox import EquinoxConfig, EquinoxPolicy
from serving.policies.fcfs import FCFSPolicy
from serving.policies.rpm import RPMPolicy
from serving.policies.vtc import LCFPolicy, VTCOraclePolicy, VTCPolicy, VTCPredictedPolicy


class PolicyName(str, enum.Enum):
    FCFS = "fcfs"
    VTC = "vtc"
    VTC_PREDICTED = "vtc-pred"
    VTC_ORACLE = "vtc-oracle"
    LCF = "lcf"
    RPM = "rpm"
    EQUINOX = "equinox"


REGISTRY = {
    PolicyName.FCFS: FCFSPolicy,
    PolicyName.VTC: VTCPolicy,
    PolicyName.VTC_PREDICTED: VTCPredictedPolicy,
    PolicyName.VTC_ORACLE: VTCOraclePolicy,
    PolicyName.LCF: LCFPolicy,
    PolicyName.RPM: RPMPolicy,
    PolicyName.EQUINOX: EquinoxPolicy,
}


def make_policy(name: str, **kw) -> Policy:
    try:
        cls = REGISTRY[PolicyName(name)]
    except ValueError:
        raise ValueError(f"unknown policy: {name!r} (known: {', '.join(p.value for p in PolicyName)})") from None
    return cls(**kw)


__all__ = ["EngineBehaviour", "EquinoxConfig", "Policy", "PolicyName", "make_policy", "REGISTRY"]
