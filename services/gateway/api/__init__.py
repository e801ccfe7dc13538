"""The OpenAI-compatible REST layer of the gateway (mirrors vLLM's ``entrypoints/openai``):

* :mod:`.protocol`: pydantic models of the OpenAI API (the schema);
* :mod:`.translate`: OpenAI schema <-> the engine's request and response (domain types of
  :mod:`swiftmesh.clients.inference`);
* :mod:`.serving`: the one request lifecycle; :mod:`.serving_chat`, :mod:`.serving_completions`,
  :mod:`.serving_models`: one handler per endpoint;
* :mod:`.streaming`: server-sent events (framed here, sent by Starlette); :mod:`.tracing`, :mod:`.metrics`;
* :mod:`.auth` (keys, limits), :mod:`.errors` (OpenAI's error envelope), :mod:`.app` (routes).

May import the gateway's domain (``..router``, ``..keys``, ``..ratelimit``, ``..messages``) and
``swiftmesh`` shared code; never grpc, ``*_pb2`` or an engine.
"""
