import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_FULL: _ClassVar[ModelFormat]
    MODEL_FORMAT_PEFT_ADAPTER: _ClassVar[ModelFormat]
    MODEL_FORMAT_GGUF_DERIVED: _ClassVar[ModelFormat]
    MODEL_FORMAT_DATASET: _ClassVar[ModelFormat]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_FULL: ModelFormat
MODEL_FORMAT_PEFT_ADAPTER: ModelFormat
MODEL_FORMAT_GGUF_DERIVED: ModelFormat
MODEL_FORMAT_DATASET: ModelFormat

class ModelFile(_message.Message):
    __slots__ = ("path", "size_bytes", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("base_model", "parent_model", "job")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    PARENT_MODEL_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    parent_model: str
    job: str
    def __init__(self, base_model: _Optional[str] = ..., parent_model: _Optional[str] = ..., job: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "format", "source", "revision", "files", "size_bytes", "lineage", "create_time", "last_used_time", "pins", "labels", "location")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TIME_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: ModelFormat
    source: str
    revision: str
    files: _containers.RepeatedCompositeFieldContainer[ModelFile]
    size_bytes: int
    lineage: Lineage
    create_time: _timestamp_pb2.Timestamp
    last_used_time: _timestamp_pb2.Timestamp
    pins: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    location: LocalLocation
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., source: _Optional[str] = ..., revision: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ModelFile, _Mapping]]] = ..., size_bytes: _Optional[int] = ..., lineage: _Optional[_Union[Lineage, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pins: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., location: _Optional[_Union[LocalLocation, _Mapping]] = ...) -> None: ...

class LocalLocation(_message.Message):
    __slots__ = ("host_id", "path")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    path: str
    def __init__(self, host_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("stage", "bytes_done", "bytes_total", "files_done", "files_total", "bytes_per_second", "eta", "current_file", "following", "bytes_resumed")
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STAGE_UNSPECIFIED: _ClassVar[PullProgress.Stage]
        STAGE_RESOLVING: _ClassVar[PullProgress.Stage]
        STAGE_DOWNLOADING: _ClassVar[PullProgress.Stage]
        STAGE_VERIFYING: _ClassVar[PullProgress.Stage]
        STAGE_CONVERTING: _ClassVar[PullProgress.Stage]
        STAGE_COMMITTING: _ClassVar[PullProgress.Stage]
    STAGE_UNSPECIFIED: PullProgress.Stage
    STAGE_RESOLVING: PullProgress.Stage
    STAGE_DOWNLOADING: PullProgress.Stage
    STAGE_VERIFYING: PullProgress.Stage
    STAGE_CONVERTING: PullProgress.Stage
    STAGE_COMMITTING: PullProgress.Stage
    STAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FILE_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    BYTES_RESUMED_FIELD_NUMBER: _ClassVar[int]
    stage: PullProgress.Stage
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    bytes_per_second: float
    eta: _duration_pb2.Duration
    current_file: str
    following: bool
    bytes_resumed: int
    def __init__(self, stage: _Optional[_Union[PullProgress.Stage, str]] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., files_done: _Optional[int] = ..., files_total: _Optional[int] = ..., bytes_per_second: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., current_file: _Optional[str] = ..., following: _Optional[bool] = ..., bytes_resumed: _Optional[int] = ...) -> None: ...

class PullModelRequest(_message.Message):
    __slots__ = ("source", "model_id", "revision", "allow_patterns", "ignore_patterns", "allow_pickle", "force", "lineage", "labels", "pin", "format")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PICKLE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    source: str
    model_id: str
    revision: str
    allow_patterns: _containers.RepeatedScalarFieldContainer[str]
    ignore_patterns: _containers.RepeatedScalarFieldContainer[str]
    allow_pickle: bool
    force: bool
    lineage: Lineage
    labels: _containers.ScalarMap[str, str]
    pin: str
    format: ModelFormat
    def __init__(self, source: _Optional[str] = ..., model_id: _Optional[str] = ..., revision: _Optional[str] = ..., allow_patterns: _Optional[_Iterable[str]] = ..., ignore_patterns: _Optional[_Iterable[str]] = ..., allow_pickle: _Optional[bool] = ..., force: _Optional[bool] = ..., lineage: _Optional[_Union[Lineage, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., pin: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ...) -> None: ...

class PullModelResponse(_message.Message):
    __slots__ = ("progress", "model")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    progress: PullProgress
    model: Model
    def __init__(self, progress: _Optional[_Union[PullProgress, _Mapping]] = ..., model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "formats", "base_model", "parent_model")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    PARENT_MODEL_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    formats: _containers.RepeatedScalarFieldContainer[ModelFormat]
    base_model: str
    parent_model: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., formats: _Optional[_Iterable[_Union[ModelFormat, str]]] = ..., base_model: _Optional[str] = ..., parent_model: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class VerifyModelRequest(_message.Message):
    __slots__ = ("name", "repair")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    name: str
    repair: bool
    def __init__(self, name: _Optional[str] = ..., repair: _Optional[bool] = ...) -> None: ...

class VerifyModelResponse(_message.Message):
    __slots__ = ("model", "ok", "files")
    class FileResult(_message.Message):
        __slots__ = ("path", "status", "expected_sha256", "actual_sha256")
        PATH_FIELD_NUMBER: _ClassVar[int]
        STATUS_FIELD_NUMBER: _ClassVar[int]
        EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
        ACTUAL_SHA256_FIELD_NUMBER: _ClassVar[int]
        path: str
        status: str
        expected_sha256: str
        actual_sha256: str
        def __init__(self, path: _Optional[str] = ..., status: _Optional[str] = ..., expected_sha256: _Optional[str] = ..., actual_sha256: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    model: Model
    ok: bool
    files: _containers.RepeatedCompositeFieldContainer[VerifyModelResponse.FileResult]
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., ok: _Optional[bool] = ..., files: _Optional[_Iterable[_Union[VerifyModelResponse.FileResult, _Mapping]]] = ...) -> None: ...

class ReadModelFileRequest(_message.Message):
    __slots__ = ("name", "path", "offset", "limit", "chunk_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    offset: int
    limit: int
    chunk_size: int
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ReadModelFileResponse(_message.Message):
    __slots__ = ("offset", "data", "file_size", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    file_size: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., file_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadModelHeader
    chunk: UploadFileChunk
    def __init__(self, header: _Optional[_Union[UploadModelHeader, _Mapping]] = ..., chunk: _Optional[_Union[UploadFileChunk, _Mapping]] = ...) -> None: ...

class UploadModelHeader(_message.Message):
    __slots__ = ("model_id", "format", "lineage", "files", "labels", "overwrite")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    format: ModelFormat
    lineage: Lineage
    files: _containers.RepeatedCompositeFieldContainer[ModelFile]
    labels: _containers.ScalarMap[str, str]
    overwrite: bool
    def __init__(self, model_id: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., lineage: _Optional[_Union[Lineage, _Mapping]] = ..., files: _Optional[_Iterable[_Union[ModelFile, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class UploadFileChunk(_message.Message):
    __slots__ = ("path", "offset", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    data: bytes
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PinModelRequest(_message.Message):
    __slots__ = ("name", "holder")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: str
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[str] = ...) -> None: ...

class UnpinModelRequest(_message.Message):
    __slots__ = ("name", "holder")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: str
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[str] = ...) -> None: ...
