from swiftmesh.jobs.v1 import jobs_pb2 as _jobs_pb2
from swiftmesh.jobs.v1 import training_pb2 as _training_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RlhfType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RLHF_TYPE_UNSPECIFIED: _ClassVar[RlhfType]
    RLHF_TYPE_DPO: _ClassVar[RlhfType]
    RLHF_TYPE_KTO: _ClassVar[RlhfType]
    RLHF_TYPE_ORPO: _ClassVar[RlhfType]
    RLHF_TYPE_CPO: _ClassVar[RlhfType]
    RLHF_TYPE_SIMPO: _ClassVar[RlhfType]
    RLHF_TYPE_RM: _ClassVar[RlhfType]
    RLHF_TYPE_PPO: _ClassVar[RlhfType]
    RLHF_TYPE_GRPO: _ClassVar[RlhfType]
RLHF_TYPE_UNSPECIFIED: RlhfType
RLHF_TYPE_DPO: RlhfType
RLHF_TYPE_KTO: RlhfType
RLHF_TYPE_ORPO: RlhfType
RLHF_TYPE_CPO: RlhfType
RLHF_TYPE_SIMPO: RlhfType
RLHF_TYPE_RM: RlhfType
RLHF_TYPE_PPO: RlhfType
RLHF_TYPE_GRPO: RlhfType

class DpoConfig(_message.Message):
    __slots__ = ("loss_type", "beta", "label_smoothing", "rpo_alpha")
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    RPO_ALPHA_FIELD_NUMBER: _ClassVar[int]
    loss_type: _containers.RepeatedScalarFieldContainer[str]
    beta: float
    label_smoothing: float
    rpo_alpha: float
    def __init__(self, loss_type: _Optional[_Iterable[str]] = ..., beta: _Optional[float] = ..., label_smoothing: _Optional[float] = ..., rpo_alpha: _Optional[float] = ...) -> None: ...

class KtoConfig(_message.Message):
    __slots__ = ("beta", "desirable_weight", "undesirable_weight")
    BETA_FIELD_NUMBER: _ClassVar[int]
    DESIRABLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    UNDESIRABLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    beta: float
    desirable_weight: float
    undesirable_weight: float
    def __init__(self, beta: _Optional[float] = ..., desirable_weight: _Optional[float] = ..., undesirable_weight: _Optional[float] = ...) -> None: ...

class CpoConfig(_message.Message):
    __slots__ = ("beta", "loss_type", "simpo_gamma", "cpo_alpha", "label_smoothing")
    BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIMPO_GAMMA_FIELD_NUMBER: _ClassVar[int]
    CPO_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    beta: float
    loss_type: str
    simpo_gamma: float
    cpo_alpha: float
    label_smoothing: float
    def __init__(self, beta: _Optional[float] = ..., loss_type: _Optional[str] = ..., simpo_gamma: _Optional[float] = ..., cpo_alpha: _Optional[float] = ..., label_smoothing: _Optional[float] = ...) -> None: ...

class RewardConfig(_message.Message):
    __slots__ = ("center_rewards_coefficient", "use_margin")
    CENTER_REWARDS_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    USE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    center_rewards_coefficient: float
    use_margin: bool
    def __init__(self, center_rewards_coefficient: _Optional[float] = ..., use_margin: _Optional[bool] = ...) -> None: ...

class PpoConfig(_message.Message):
    __slots__ = ("reward_model", "rollout_batch_size", "num_ppo_epochs", "num_mini_batches", "kl_coef", "cliprange", "cliprange_value", "vf_coef", "gamma", "lam", "response_length", "temperature", "reward_funcs", "total_episodes", "missing_eos_penalty")
    REWARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_PPO_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    NUM_MINI_BATCHES_FIELD_NUMBER: _ClassVar[int]
    KL_COEF_FIELD_NUMBER: _ClassVar[int]
    CLIPRANGE_FIELD_NUMBER: _ClassVar[int]
    CLIPRANGE_VALUE_FIELD_NUMBER: _ClassVar[int]
    VF_COEF_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    LAM_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    REWARD_FUNCS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPISODES_FIELD_NUMBER: _ClassVar[int]
    MISSING_EOS_PENALTY_FIELD_NUMBER: _ClassVar[int]
    reward_model: str
    rollout_batch_size: int
    num_ppo_epochs: int
    num_mini_batches: int
    kl_coef: float
    cliprange: float
    cliprange_value: float
    vf_coef: float
    gamma: float
    lam: float
    response_length: int
    temperature: float
    reward_funcs: _containers.RepeatedScalarFieldContainer[str]
    total_episodes: int
    missing_eos_penalty: float
    def __init__(self, reward_model: _Optional[str] = ..., rollout_batch_size: _Optional[int] = ..., num_ppo_epochs: _Optional[int] = ..., num_mini_batches: _Optional[int] = ..., kl_coef: _Optional[float] = ..., cliprange: _Optional[float] = ..., cliprange_value: _Optional[float] = ..., vf_coef: _Optional[float] = ..., gamma: _Optional[float] = ..., lam: _Optional[float] = ..., response_length: _Optional[int] = ..., temperature: _Optional[float] = ..., reward_funcs: _Optional[_Iterable[str]] = ..., total_episodes: _Optional[int] = ..., missing_eos_penalty: _Optional[float] = ...) -> None: ...

class GrpoConfig(_message.Message):
    __slots__ = ("reward_model", "reward_funcs", "num_generations", "beta", "max_completion_length", "temperature", "epsilon", "loss_type")
    REWARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    REWARD_FUNCS_FIELD_NUMBER: _ClassVar[int]
    NUM_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    reward_model: str
    reward_funcs: _containers.RepeatedScalarFieldContainer[str]
    num_generations: int
    beta: float
    max_completion_length: int
    temperature: float
    epsilon: float
    loss_type: str
    def __init__(self, reward_model: _Optional[str] = ..., reward_funcs: _Optional[_Iterable[str]] = ..., num_generations: _Optional[int] = ..., beta: _Optional[float] = ..., max_completion_length: _Optional[int] = ..., temperature: _Optional[float] = ..., epsilon: _Optional[float] = ..., loss_type: _Optional[str] = ...) -> None: ...

class AlignmentSpec(_message.Message):
    __slots__ = ("model", "rlhf_type", "tuner", "lora", "datasets", "args", "distribution", "ref_model", "dpo", "kto", "cpo", "rm", "ppo", "grpo", "output_model_id", "max_prompt_length", "chat_template", "ignore_columns")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RLHF_TYPE_FIELD_NUMBER: _ClassVar[int]
    TUNER_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    REF_MODEL_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    KTO_FIELD_NUMBER: _ClassVar[int]
    CPO_FIELD_NUMBER: _ClassVar[int]
    RM_FIELD_NUMBER: _ClassVar[int]
    PPO_FIELD_NUMBER: _ClassVar[int]
    GRPO_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    IGNORE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    model: str
    rlhf_type: RlhfType
    tuner: _training_pb2.Tuner
    lora: _training_pb2.LoraConfig
    datasets: _containers.RepeatedScalarFieldContainer[str]
    args: _training_pb2.TrainingArguments
    distribution: _training_pb2.Distribution
    ref_model: str
    dpo: DpoConfig
    kto: KtoConfig
    cpo: CpoConfig
    rm: RewardConfig
    ppo: PpoConfig
    grpo: GrpoConfig
    output_model_id: str
    max_prompt_length: int
    chat_template: str
    ignore_columns: bool
    def __init__(self, model: _Optional[str] = ..., rlhf_type: _Optional[_Union[RlhfType, str]] = ..., tuner: _Optional[_Union[_training_pb2.Tuner, str]] = ..., lora: _Optional[_Union[_training_pb2.LoraConfig, _Mapping]] = ..., datasets: _Optional[_Iterable[str]] = ..., args: _Optional[_Union[_training_pb2.TrainingArguments, _Mapping]] = ..., distribution: _Optional[_Union[_training_pb2.Distribution, _Mapping]] = ..., ref_model: _Optional[str] = ..., dpo: _Optional[_Union[DpoConfig, _Mapping]] = ..., kto: _Optional[_Union[KtoConfig, _Mapping]] = ..., cpo: _Optional[_Union[CpoConfig, _Mapping]] = ..., rm: _Optional[_Union[RewardConfig, _Mapping]] = ..., ppo: _Optional[_Union[PpoConfig, _Mapping]] = ..., grpo: _Optional[_Union[GrpoConfig, _Mapping]] = ..., output_model_id: _Optional[str] = ..., max_prompt_length: _Optional[int] = ..., chat_template: _Optional[str] = ..., ignore_columns: _Optional[bool] = ...) -> None: ...

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
    spec: AlignmentSpec
    job_id: str
    force: bool
    validate_only: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, spec: _Optional[_Union[AlignmentSpec, _Mapping]] = ..., job_id: _Optional[str] = ..., force: _Optional[bool] = ..., validate_only: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EstimateJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: AlignmentSpec
    def __init__(self, spec: _Optional[_Union[AlignmentSpec, _Mapping]] = ...) -> None: ...
