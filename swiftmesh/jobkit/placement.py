"""Where a job's workers go on Ray: placement strategies, the resource request of a worker,
and why Ray cannot place a run yet.

Ray Train places a run's workers as one placement group
(https://docs.ray.io/en/latest/ray-core/scheduling/placement-group.html) of ``num_workers``
bundles (one per worker: :func:`worker_bundle`) under a strategy (:func:`placement_strategy`).
A group that does not fit stays pending; :func:`waiting_reason` turns the per-node free and
total resources into the sentence the job's log and status show. Pure functions: no Ray import.
"""

from __future__ import annotations

from swiftmesh.runtime.errors import InvalidArgument

# Ray placement group strategies a job may ask for (Ray Train ``ScalingConfig.placement_strategy``):
# PACK (default: as few nodes as possible, spreading when it must), SPREAD (as many nodes as
# possible), STRICT_PACK (all workers on one node), STRICT_SPREAD (every worker on its own node).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEFAULT_PLACEMENT_STRATEGY = "PACK"
# Job label choosing the placement strategy of its workers (CreateJob ``labels``).
PLACEMENT_LABEL = "swiftmesh.io/placement-strategy"
# Ray's resource that only the head node has (a tiny amount of it pins an actor there).
HEAD_NODE_RESOURCE = "node:__internal_head__"


def placement_strategy(value: str | None, field: str = f"labels[{PLACEMENT_LABEL}]") -> str:
    """Normalise a placement strategy ("strict-spread" -> "STRICT_SPREAD"; empty -> "PACK").

    Raises:
        InvalidArgument: anything but one of ``PLACEMENT_STRATEGIES`` (reason
            ``BAD_PLACEMENT_STRATEGY``, the field violation naming ``field``).
    """
    v = (value or "").strip().upper().replace("-", "_")
    if not v:
        return DEFAULT_PLACEMENT_STRATEGY
    if v not in PLACEMENT_STRATEGIES:
        raise InvalidArgument(
            f"unknown placement strategy {value!r}; one of {', '.join(PLACEMENT_STRATEGIES)}",
            field_violations=[(field, f"got {value!r}; one of {', '.join(PLACEMENT_STRATEGIES)}")],
            reason="BAD_PLACEMENT_STRATEGY",
        )
    return v


def worker_bundle(cpus: float, gpus: float = 0.0, memory_bytes: int = 0) -> dict[str, float]:
    """The Ray resource request of one worker: ``{"CPU": cpus, "GPU": gpus, "memory": bytes}``
    (GPU and memory, in bytes, only when > 0).

    Raises:
        InvalidArgument: a negative amount (naming ``spec.distribution.<field>``).
    """
    for name, v in (("cpus_per_worker", cpus), ("gpus_per_worker", gpus), ("memory_bytes_per_worker", memory_bytes)):
        if v < 0:
            raise InvalidArgument(f"{name} must be >= 0, got {v}",
                                  field_violations=[(f"spec.distribution.{name}", f"got {v}")])
    bundle: dict[str, float] = {"CPU": float(cpus)}
    if gpus:
        bundle["GPU"] = float(gpus)
    if memory_bytes:
        bundle["memory"] = float(memory_bytes)
    return bundle


def _fits(free: dict[str, float], bundle: dict[str, float]) -> int:
    """How many workers of ``bundle`` fit into ``free`` (one node's resources)."""
    n = None
    for r, amount in bundle.items():
        if amount <= 0:
            continue
        k = int(free.get(r, 0.0) / amount + 1e-9)
        n = k if n is None else min(n, k)
    return 1 << 30 if n is None else n


def placeable(bundle: dict[str, float], strategy: str, per_node: dict[str, dict[str, float]]) -> int:
    """How many workers of ``bundle`` Ray could place on nodes with these resources under
    ``strategy`` (STRICT_SPREAD: one per node; STRICT_PACK: on one node; else anywhere)."""
    fits = [_fits(res, bundle) for res in per_node.values()]
    if strategy == "STRICT_SPREAD":
        return sum(1 for k in fits if k >= 1)
    if strategy == "STRICT_PACK":
        return max(fits, default=0)
    return sum(fits)


def _amount(resource: str, amount: float) -> str:
    if resource == "memory":
        return f"{amount / 2**30:.1f} GiB memory"
    if resource in ("CPU", "GPU"):
        return f"{amount:g} {resource}{'' if amount == 1 else 's'}"
    return f"{amount:g} {resource}"


def waiting_reason(
    num_workers: int,
    bundle: dict[str, float],
    strategy: str,
    free_per_node: dict[str, dict[str, float]],
    total_per_node: dict[str, dict[str, float]] | None = None,
) -> str | None:
    """Why Ray cannot place a job's workers now, or None when it can.

    Args:
        num_workers: workers of the job (>= 1).
        bundle: one worker's resource request (:func:`worker_bundle`).
        strategy: one of ``PLACEMENT_STRATEGIES``.
        free_per_node: free resources of each live node (node id -> {resource: amount}).
        total_per_node: total resources of each live node (default: ``free_per_node``); says
            whether the job could fit even on an idle cluster.

    E.g. "waiting for 2 workers x 1 CPU, each on its own node (STRICT_SPREAD); the cluster has
    1 CPU free; 1 of 1 nodes can take a worker now".
    """
    if placeable(bundle, strategy, free_per_node) >= num_workers:
        return None
    total_per_node = free_per_node if total_per_node is None else total_per_node
    asked = {r: a for r, a in bundle.items() if a > 0}
    need = ", ".join(_amount(r, a) for r, a in asked.items()) or "no resources"
    how = {"STRICT_SPREAD": f", each on its own node ({strategy})", "STRICT_PACK": f", all on one node ({strategy})"}.get(
        strategy, "")
    free = ", ".join(_amount(r, sum(res.get(r, 0.0) for res in free_per_node.values())) for r in asked)
    nodes_ok = sum(1 for res in free_per_node.values() if _fits(res, bundle) >= 1)
    n = len(free_per_node)
    msg = (f"waiting for {num_workers} worker{'' if num_workers == 1 else 's'} x {need}{how}; "
           f"the cluster has {free} free; {nodes_ok} of {n} node{'' if n == 1 else 's'} can take a worker now")
    if placeable(bundle, strategy, total_per_node) < num_workers:
        m = len(total_per_node)
        msg += (f" (the cluster's {m} node{'' if m == 1 else 's'} cannot hold the job even when idle: "
                "it starts once nodes with room join)")
    return msg
