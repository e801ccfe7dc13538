from swiftmesh.jobs.v1 import jobs_pb2 as _jobs_pb2
from swiftmesh.jobs.v1 import training_pb2 as _training_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_SFT: _ClassVar[Task]
    TASK_PT: _ClassVar[Task]
    TASK_MERGE: _ClassVar[Task]
TASK_UNSPECIFIED: Task
TASK_SFT: Task
TASK_PT: Task
TASK_MERGE: Task

class TrainingSpec(_message.Message):
    __slots__ = ("model", "task", "tuner", "lora", "datasets", "args", "distribution", "output_model_id", "merge_lora", "chat_template", "ignore_columns")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TUNER_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MERGE_LORA_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    IGNORE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    model: str
    task: Task
    tuner: _training_pb2.Tuner
    lora: _training_pb2.LoraConfig
    datasets: _containers.RepeatedScalarFieldContainer[str]
    args: _training_pb2.TrainingArguments
    distribution: _training_pb2.Distribution
    output_model_id: str
    merge_lora: bool
    chat_template: str
    ignore_columns: bool
    def __init__(self, model: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., tuner: _Optional[_Union[_training_pb2.Tuner, str]] = ..., lora: _Optional[_Union[_training_pb2.LoraConfig, _Mapping]] = ..., datasets: _Optional[_Iterable[str]] = ..., args: _Optional[_Union[_training_pb2.TrainingArguments, _Mapping]] = ..., distribution: _Optional[_Union[_training_pb2.Distribution, _Mapping]] = ..., output_model_id: _Optional[str] = ..., merge_lora: _Optional[bool] = ..., chat_template: _Optional[str] = ..., ignore_columns: _Optional[bool] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "job_id", "force", "validate_only", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    job_id: str
    force: bool
    validate_only: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ..., job_id: _Optional[str] = ..., force: _Optional[bool] = ..., validate_only: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EstimateJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ...) -> None: ...
