"""Policies: what plays a model's turns. The protocol (:mod:`~vgym.policies.base`: a policy sees the prompt,
images and tool schemas, never the answer; only a policy declaring ``reads_ground_truth`` gets the task's
solution), the scripted oracle, the random-answer baseline, a transformers (HF) policy, an OpenAI-compatible
HTTP policy (its wire format in :mod:`~vgym.policies.openai_messages`), an offline vLLM policy, and
:mod:`~vgym.policies.spec` (``oracle``, ``hf:DIR``, ... strings → policies).

May import: the ``vgym`` root (task, protocol, errors) and :mod:`vgym.engine`. Never the rollout, eval,
trainers or the entry layer. vLLM is imported only when a :class:`~vgym.policies.vllm.VLLMPolicy` is built.
"""
