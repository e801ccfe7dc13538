"""``hub://host:port/<model id>``: a model on another hub, mirrored through ``ReadModelFile``
(resumable, sha256-verified). Files, revision and format are the other hub's."""

from __future__ import annotations

from swiftmesh.names import validate_model_id
from swiftmesh.runtime.errors import FailedPrecondition, Unavailable

from ..store import ModelFormat
from .base import Plan, PlannedFile, SourceContext, bad_source

SCHEMES = ("hub",)


def resolve(source: str, ctx: SourceContext, revision: str = "") -> Plan:
    """The plan of the other hub's model (``revision`` is not used)."""
    import grpc

    from swiftmesh.hub.v1 import hub_pb2
    from swiftmesh.runtime.client import domain_error

    from ..download import sync_hub_stub

    rest = source[len("hub://"):]
    target, _, model = rest.partition("/")
    if not target or not model:
        raise bad_source(f"{source}: expected hub://host:port/<model id>", "expected hub://host:port/model")
    model = model.removeprefix("models/")
    validate_model_id(model, "source")
    if ctx.hub_settings is None:
        raise FailedPrecondition("hub:// sources need settings")
    try:
        with sync_hub_stub(ctx.hub_settings, target) as (stub, metadata):
            m = stub.GetModel(hub_pb2.GetModelRequest(name=f"models/{model}"), metadata=metadata,
                              timeout=ctx.hub_settings.rpc_timeout_s)
    except grpc.RpcError as e:
        err = domain_error(e)
        if isinstance(err, Unavailable) or err.code_name == "DEADLINE_EXCEEDED":
            raise Unavailable(f"{source}: hub at {target} unreachable: {err.message}",
                              reason="SOURCE_UNAVAILABLE") from None
        raise err from None
    plan = Plan(source=source, kind="hub", default_id=model, revision=m.revision)
    plan.format = ModelFormat(m.format) if m.format else ModelFormat.UNSPECIFIED
    for f in m.files:
        plan.files.append(PlannedFile(
            path=f.path,
            origin={"kind": "hub", "target": target, "model": m.name, "path": f.path, "sha256": f.sha256},
            size=f.size_bytes, sha256=f.sha256,
        ))
    return plan


def default_id(source: str) -> str:
    """The model id after ``host:port/``."""
    return source[len("hub://"):].partition("/")[2].removeprefix("models/")
