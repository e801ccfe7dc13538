"""``hub://host:port/<model id>``: a model on another hub, mirrored through ``ReadModelFile``
(resumable, sha256-verified). Files, revision and format are the other hub's; the other hub is
reached through ``ctx.peers`` (:class:`..peers.PeerHubs`)."""

from __future__ import annotations

from swiftmesh.names import validate_model_id
from swiftmesh.runtime.errors import FailedPrecondition, SwiftMeshError, Unavailable

from .base import Plan, PlannedFile, SourceContext, bad_source

SCHEMES = ("hub",)


def resolve(source: str, ctx: SourceContext, revision: str = "") -> Plan:
    """The plan of the other hub's model (``revision`` is not used: the model is mirrored as it
    is there). Raises InvalidArgument (bad source), Unavailable (reason SOURCE_UNAVAILABLE: that
    hub is unreachable or too slow), the other hub's error otherwise (NotFound ...)."""
    target, _, model = source[len("hub://"):].partition("/")
    if not target or not model:
        raise bad_source(f"{source}: expected hub://host:port/<model id>", "expected hub://host:port/model")
    model = model.removeprefix("models/")
    validate_model_id(model, "source")
    if ctx.peers is None:
        raise FailedPrecondition("hub:// sources need the client of other hubs (SourceContext.peers)")
    try:
        m = ctx.peers.get_model(target, model)
    except SwiftMeshError as err:
        if isinstance(err, Unavailable) or err.code_name == "DEADLINE_EXCEEDED":
            raise Unavailable(f"{source}: hub at {target} unreachable: {err.message}",
                              reason="SOURCE_UNAVAILABLE") from None
        raise
    plan = Plan(source=source, kind="hub", default_id=model, revision=m.revision, format=m.format)
    for f in m.files:
        plan.files.append(PlannedFile(
            path=f.path,
            origin={"kind": "hub", "target": target, "model": m.name, "path": f.path, "sha256": f.sha256},
            size=f.size, sha256=f.sha256,
        ))
    return plan


def default_id(source: str) -> str:
    """The model id after ``host:port/``."""
    return source[len("hub://"):].partition("/")[2].removeprefix("models/")
