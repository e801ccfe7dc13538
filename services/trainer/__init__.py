"""The trainer service: supervised fine-tuning (``sft``), continued pre-training (``pt``) and
adapter merge (``merge``) jobs on the shared job machinery (:mod:`swiftmesh.jobkit`).

Modules:

* :mod:`.spec`: the domain spec of a job (:class:`~.spec.TrainingSpec`, jobkit's ``TuningSpec``
  plus the task and ``merge_lora``).
* :mod:`.kinds`: the job kinds (prepare / estimate on the service, train in the Ray workers).
* :mod:`.servicer`: ``TrainerService`` (proto <-> domain); :mod:`.server`: process wiring with
  the shared ``JobService``.

What it may import: ``swiftmesh.jobkit`` (job machinery, settings, data reading and encoding),
``swiftmesh.runtime``, ``swiftmesh.names``, the HF stack; never another service. Only
:mod:`.servicer` and :mod:`.server` import grpc or generated ``*_pb2`` modules.
"""
