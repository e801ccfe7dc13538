"""Domain errors of SwiftMesh, and their translation to gRPC statuses with google.rpc details.

Domain code raises the subclasses of :class:`SwiftMeshError` (no gRPC in them); the server
interceptors turn them into a ``grpc.Status`` carrying a ``google.rpc.Status`` with
``ErrorInfo`` (a stable ``reason``, domain ``swiftmesh``, metadata), ``BadRequest`` field
violations and ``RetryInfo`` where given (AIP-193). Clients turn an ``RpcError`` back into the
same exception with :func:`from_rpc_error`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "swiftmesh"

# HTTP status for each google.rpc.Code (https://cloud.google.com/apis/design/errors#handling_errors)
HTTP_STATUS = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation).

    ``field`` is a path such as ``"spec.datasets[0]"`` or ``"data.jsonl:12.messages"``.
    """

    field: str
    description: str


class SwiftMeshError(Exception):
    """Base of every error SwiftMesh reports to its callers.

    Args:
        message: what is wrong, for people.
        reason: stable UPPER_SNAKE_CASE identifier for programs (default: the code's name).
        field_violations: bad request fields, as ``FieldViolation`` or ``(field, description)``.
        metadata: extra ``ErrorInfo.metadata`` (string keys and values).
        retry_after: seconds after which a retry may succeed (``RetryInfo``).
    """

    code: int = code_pb2.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field_violations: Iterable[FieldViolation | tuple[str, str]] = (),
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or code_pb2.Code.Name(self.code)
        self.field_violations = [
            fv if isinstance(fv, FieldViolation) else FieldViolation(*fv) for fv in field_violations
        ]
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.retry_after = retry_after

    @property
    def code_name(self) -> str:
        """The gRPC status code name, e.g. ``"NOT_FOUND"``."""
        return code_pb2.Code.Name(self.code)

    @property
    def http_status(self) -> int:
        """The HTTP status the code maps to (AIP-193 table; 500 when unknown)."""
        return HTTP_STATUS.get(self.code, 500)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"

    def to_status_proto(self) -> status_pb2.Status:
        """The google.rpc.Status with ErrorInfo, BadRequest and RetryInfo details."""
        details = []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        details.append(info)
        if self.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f.field, description=f.description)
                        for f in self.field_violations
                    ]
                )
            )
        if self.retry_after is not None:
            seconds = int(self.retry_after)
            nanos = int((self.retry_after - seconds) * 1e9)
            details.append(
                error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos))
            )
        packed = []
        for d in details:
            a = any_pb2.Any()
            a.Pack(d)
            packed.append(a)
        return status_pb2.Status(code=self.code, message=self.message, details=packed)


class Cancelled(SwiftMeshError):
    """CANCELLED: the caller (or a cancel request) stopped the work."""
    code = code_pb2.CANCELLED


class InvalidArgument(SwiftMeshError):
    """INVALID_ARGUMENT (HTTP 400): the request is wrong whatever the state; field violations name what."""
    code = code_pb2.INVALID_ARGUMENT


class DeadlineExceeded(SwiftMeshError):
    """DEADLINE_EXCEEDED (HTTP 504): the deadline passed before the work finished."""
    code = code_pb2.DEADLINE_EXCEEDED


class NotFound(SwiftMeshError):
    """NOT_FOUND (HTTP 404): the named resource does not exist."""
    code = code_pb2.NOT_FOUND


class AlreadyExists(SwiftMeshError):
    """ALREADY_EXISTS (HTTP 409): a resource with that name exists."""
    code = code_pb2.ALREADY_EXISTS


class PermissionDenied(SwiftMeshError):
    """PERMISSION_DENIED (HTTP 403): authenticated, but not allowed to do this."""
    code = code_pb2.PERMISSION_DENIED


class Unauthenticated(SwiftMeshError):
    """UNAUTHENTICATED (HTTP 401): missing or invalid credentials."""
    code = code_pb2.UNAUTHENTICATED


class ResourceExhausted(SwiftMeshError):
    """RESOURCE_EXHAUSTED (HTTP 429): a quota or rate limit; ``retry_after`` says when to retry."""
    code = code_pb2.RESOURCE_EXHAUSTED


class FailedPrecondition(SwiftMeshError):
    """FAILED_PRECONDITION (HTTP 400): the system is not in the state the call needs."""
    code = code_pb2.FAILED_PRECONDITION


class Aborted(SwiftMeshError):
    """ABORTED (HTTP 409): a concurrency conflict; retry the whole read-modify-write."""
    code = code_pb2.ABORTED


class Unimplemented(SwiftMeshError):
    """UNIMPLEMENTED (HTTP 501): the method or option is not supported here."""
    code = code_pb2.UNIMPLEMENTED


class Internal(SwiftMeshError):
    """INTERNAL (HTTP 500): a bug or broken invariant on the server."""
    code = code_pb2.INTERNAL


class Unavailable(SwiftMeshError):
    """UNAVAILABLE (HTTP 503): transient; the client factory retries it with backoff."""
    code = code_pb2.UNAVAILABLE


class DataLoss(SwiftMeshError):
    """DATA_LOSS (HTTP 500): data is corrupt or lost (e.g. a checksum mismatch)."""
    code = code_pb2.DATA_LOSS


_BY_CODE: dict[int, type[SwiftMeshError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
    )
}


def error_for_code(code: int) -> type[SwiftMeshError]:
    """The SwiftMeshError subclass for a google.rpc.Code value (SwiftMeshError if none)."""
    return _BY_CODE.get(code, SwiftMeshError)


def from_status_proto(status: status_pb2.Status) -> SwiftMeshError:
    """Rebuild the domain error from a google.rpc.Status (the inverse of ``to_status_proto``)."""
    reason = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            violations = [FieldViolation(v.field, v.description) for v in br.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            retry_after = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
    cls = error_for_code(status.code)
    err = cls(status.message, reason=reason, field_violations=violations, metadata=metadata, retry_after=retry_after)
    if cls is SwiftMeshError:
        err.code = status.code
    return err
