"""The aligner service: preference and RL alignment jobs on the shared job machinery.

Methods (``AlignmentSpec.rlhf_type``, ms-swift's ``--rlhf_type``): DPO (Rafailov et al. 2023,
arXiv:2305.18290) with TRL's loss types and RPO, KTO (arXiv:2402.01306), ORPO
(arXiv:2403.07691), CPO (arXiv:2401.08417), SimPO (arXiv:2405.14734), reward models (pairwise
Bradley-Terry loss, Ouyang et al. 2022, arXiv:2203.02155), PPO (our own trainer, Schulman et al.
2017, arXiv:1707.06347, following Huang et al. 2024, arXiv:2403.17031) and GRPO (Shao et al.
2024, arXiv:2402.03300).

Modules:

* :mod:`.config`: the domain spec of a job (:class:`~.config.AlignmentSpec`, jobkit's
  ``TuningSpec`` plus the method and its settings) and what a worker's trainer consumes
  (:class:`~.config.AlignmentConfig`). Dataset formats per method live in
  :mod:`swiftmesh.jobkit.data`.
* :mod:`.models`: loading the policy, PEFT adapters and the reference model (the choice of
  reference is documented there: adapter disabled for a new adapter, a frozen copy of the
  starting adapter when continuing an SFT adapter, a frozen full copy for full fine-tuning).
* :mod:`.methods`: :func:`~.methods.build_trainer`, the TRL (or PPO) trainer of each method.
* :mod:`.rewards`: built-in reward functions and reward-model scoring for PPO and GRPO.
* :mod:`.ppo`: PPO for RLHF (``PPOConfig`` + ``PPOTrainer``) and its tensor math.
* :mod:`.kinds`: the jobkit job kinds (prepare / estimate on the service, train in Ray workers).
* :mod:`.servicer`, :mod:`.server`: ``AlignerService`` (proto <-> domain) + the shared ``JobService``.

What it may import: ``swiftmesh.jobkit`` (job machinery, settings, data reading), ``swiftmesh.runtime``,
``swiftmesh.names``, the HF/TRL stack; never another service. Only :mod:`.servicer` and
:mod:`.server` import grpc or generated ``*_pb2`` modules.
"""
