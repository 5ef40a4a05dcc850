"""Policies: the scripted oracle and a transformers (HF) policy behind one :class:`Policy` protocol."""

from vgym.policies.base import Policy, PolicyInput, PolicyOutput
from vgym.policies.oracle import OraclePolicy

__all__ = ["Policy", "PolicyInput", "PolicyOutput", "OraclePolicy"]
