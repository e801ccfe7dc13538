"""The gateway service: the OpenAI REST facade, the router over engine workers, and the engine
worker process itself (serving models and LoRA adapters with the transformers, vLLM or LmDeploy
engines).

What it owns, by layer:

* process wiring: :mod:`.server` (gateway: uvicorn + the gRPC GatewayService) and
  :mod:`.worker_server` (an engine worker: the gRPC InferenceService);
* servicers, proto <-> domain only: :mod:`.admin_servicer` (GatewayService),
  :mod:`.worker_servicer` (InferenceService);
* the REST layer (:mod:`.api`), as vLLM's ``entrypoints/openai``: protocol models, translation
  to engine requests, SSE streaming, one handler per endpoint sharing one request lifecycle;
* domain: :mod:`.router` (worker pool, health, least-loaded routing, fail over),
  :mod:`.keys` (API keys in SQLite), :mod:`.ratelimit` (per-key limits), :mod:`.messages` (the
  one chat-message validator), :mod:`.engines` (the engine interface and its backends; never
  sees HTTP or gRPC).

What it may import: ``swiftmesh.runtime`` (config, errors, server and client plumbing, SQLite,
paging), ``swiftmesh.names``, ``swiftmesh.clients`` (the worker and gateway clients with their
domain types; the hub client, for model files), and the generated ``swiftmesh.gateway.v1``
stubs in servicers and servers only. Never another service (``services/<other>/``). The router
and :mod:`.api` import no grpc and no ``*_pb2``: every call to a worker goes through
:class:`swiftmesh.clients.gateway.WorkerClient`.
"""
