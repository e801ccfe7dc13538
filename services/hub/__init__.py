"""The hub service: models and adapters downloaded from many sources into a verified,
content-addressed cache, their catalogue and lineage, and their files served to other services.

Layers:

* ``server`` (process wiring) and ``servicer`` (hub.v1 messages <-> domain calls, nothing else)
  are the only modules that import grpc or generated ``*_pb2`` modules.
* The domain: ``hub`` (the facade the servicer calls), ``catalogue`` (look-up, listing, pins,
  deletion, commit), ``pull`` and ``progress`` (pulls and their progress), ``upload``, ``verify``
  (re-hash and repair), ``eviction`` (quota, removal, start-up sweep), ``store`` (the cache on
  disk and its SQLite state), ``download`` (single-file transfers with resume and retries),
  ``sources/`` (one module per source URI scheme), ``gguf_import`` (GGUF -> safetensors, run in a
  child process), ``peers`` (other hubs, for hub://, through ``swiftmesh.clients.hub``).

May import: ``swiftmesh.runtime``, ``swiftmesh.names``, ``swiftmesh.clients.hub`` (``peers``
only) and the generated ``swiftmesh.hub.v1`` (server and servicer only); never another service
under ``swiftmesh.services``.
"""
