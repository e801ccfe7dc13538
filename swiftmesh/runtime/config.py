"""Settings of every SwiftMesh service (pydantic-settings).

Sources, highest priority first:
  1. keyword arguments (the CLI passes its flags here),
  2. ``SWIFTMESH_*`` environment variables, nested with ``__`` (``SWIFTMESH_HUB__PORT=6000``),
  3. a YAML file named by ``--config`` or ``SWIFTMESH_CONFIG`` (same structure as the model),
  4. the defaults below (everything on localhost, state under ``data_dir``).

Invalid values raise :class:`ConfigError` naming each bad setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_DATA_DIR = Path(os.path.expanduser("~/.swiftmesh"))


class ConfigError(ValueError):
    """Settings failed validation; the message lists every bad setting."""


class TLSSettings(BaseModel):
    """TLS for gRPC. With ``cert_file`` and ``key_file`` the servers speak TLS; with
    ``require_client_cert`` they demand a client certificate signed by ``ca_file`` (mutual TLS).
    Clients use ``ca_file`` to verify servers and ``cert_file``/``key_file`` as their identity."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False
    # Name the server certificate is checked against (default: the host being dialled).
    server_name: str | None = None

    @field_validator("cert_file", "key_file", "ca_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        # SWIFTMESH_TLS__CA_FILE= (empty) means unset, not the current directory.
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _files_usable(self) -> TLSSettings:
        """Each file set must be a readable file of PEM; cert_file and key_file go together and
        must be one key pair (checked with ``cryptography`` when installed)."""
        problems = [f"SWIFTMESH_TLS__{name.upper()}={path}: {why}"
                    for name, path, why in _tls_file_problems(self)]
        if bool(self.cert_file) != bool(self.key_file):
            problems.append("SWIFTMESH_TLS__CERT_FILE and SWIFTMESH_TLS__KEY_FILE (tls.cert_file, tls.key_file) "
                            "go together: set both or neither")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _tls_file_problems(tls: TLSSettings) -> list[tuple[str, Path, str]]:
    """(setting, path, what is wrong) for each unusable TLS file of ``tls``."""
    out: list[tuple[str, Path, str]] = []
    data: dict[str, bytes] = {}
    for name in ("cert_file", "key_file", "ca_file"):
        path = getattr(tls, name)
        if path is None:
            continue
        if not path.exists():
            out.append((name, path, "no such file"))
        elif not path.is_file():
            out.append((name, path, "not a regular file"))
        else:
            try:
                data[name] = path.read_bytes()
            except OSError as e:
                out.append((name, path, f"cannot be read ({e.strerror})"))
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # not a declared dependency (swiftmesh certs uses it): then existence only
        return out
    loaded: dict[str, Any] = {}
    loaders = {"cert_file": (x509.load_pem_x509_certificate, "not a PEM certificate"),
               "key_file": (lambda b: serialization.load_pem_private_key(b, password=None),
                            "not an unencrypted PEM private key"),
               "ca_file": (x509.load_pem_x509_certificates, "not PEM CA certificates")}
    for name, raw in data.items():
        load, what = loaders[name]
        try:
            loaded[name] = load(raw)
        except (ValueError, TypeError):
            out.append((name, getattr(tls, name), what))
    if "cert_file" in loaded and "key_file" in loaded:
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if loaded["cert_file"].public_key().public_bytes(*spki) != loaded["key_file"].public_key().public_bytes(*spki):
            out.append(("key_file", tls.key_file, f"is not the private key of the certificate {tls.cert_file}"))
    return out


class Endpoint(BaseModel):
    """Where a gRPC service listens, and where clients find it."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    # Prometheus /metrics over HTTP (0: off).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Address clients dial (default host:port), e.g. "hub.swiftmesh.svc:50051".
    address: str | None = None

    @property
    def target(self) -> str:
        """The address clients dial: ``address`` when set, else host:port (a wildcard host becomes 127.0.0.1)."""
        if self.address:
            return self.address
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"


class HubSettings(Endpoint):
    """The hub service: ports, cache directory, size quota and sources."""
    port: int = Field(default=50051, ge=0, le=65535)
    metrics_port: int = Field(default=9151, ge=0, le=65535)
    # Cache directory (default <data_dir>/hub).
    cache_dir: Path | None = None
    # Size quota of the cache in bytes (0: unlimited): blobs and partial downloads, these counted while
    # they grow; least recently used unpinned models are evicted first.
    quota_bytes: int = Field(default=0, ge=0)
    # Partial downloads (kept for resume) untouched this long are removed, in seconds (default a day);
    # checked at start and every hour.
    partial_max_age_s: float = Field(default=24 * 3600, gt=0)
    # Hugging Face endpoint for hf:// sources (as HF_ENDPOINT does).
    hf_endpoint: str | None = None
    hf_token: SecretStr | None = None
    # ModelScope endpoint for ms:// sources (as MODELSCOPE_DOMAIN does).
    ms_endpoint: str | None = None
    # ModelScope access token for private ms:// repositories (default: the modelscope client's own login).
    ms_token: SecretStr | None = None
    # Local directories a PullModel of a path, file:// or pkg:// source may read. None: callers on this
    # machine (loopback peers) may read any path the hub can read, callers on other machines none.
    local_source_roots: list[Path] | None = None
    # UploadModel of pickle-based weights (.bin, .pt, .pth, .ckpt, .pkl, .pickle; loading them can run
    # code). False: an upload listing one is refused (INVALID_ARGUMENT, reason PICKLE_REFUSED).
    upload_allow_pickle: bool = False
    # Hosts an HTTP download may be redirected to besides the source's own host and port: "host",
    # "host:port" or fnmatch patterns ("*.hf.co"). None: the CDN hosts of the public Hugging Face
    # (*.hf.co, *.huggingface.co) and ModelScope (*.modelscope.cn, modelscope.oss-*.aliyuncs.com)
    # endpoints when those are the endpoints in use; []: the source's own host only. Refused hops get
    # PERMISSION_DENIED (reason REDIRECT_NOT_ALLOWED) naming the host; https -> http is always refused.
    redirect_allow_hosts: list[str] | None = None
    # HTTP download: parallel files, retries.
    download_concurrency: int = Field(default=4, ge=1)
    download_retries: int = Field(default=5, ge=0)


class TrainerSettings(Endpoint):
    """The trainer service: ports, the Ray cluster it schedules on, job state and checkpoint storage."""
    port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9152, ge=0, le=65535)
    # Ray cluster address (as RAY_ADDRESS); empty: an embedded local Ray.
    ray_address: str | None = None
    # CPUs the embedded local Ray may use (0: all).
    ray_num_cpus: int = Field(default=0, ge=0)
    # Job state and checkpoints (default <data_dir>/trainer).
    state_dir: Path | None = None
    # Ray Train checkpoint storage (default <state_dir>/checkpoints). On a multi-node Ray cluster
    # a directory that this service and every Ray node mount at the same path (NFS, a shared volume).
    storage_path: Path | None = None
    # The jobs database, a SQLAlchemy URL (default sqlite:///<state_dir>/jobs.db), e.g.
    # postgresql+psycopg://user@host:5432/swiftmesh; trainer and aligner may share one database.
    database_url: str | None = None


class AlignerSettings(TrainerSettings):
    """The aligner service: the trainer settings on its own ports (50053, metrics 9153)."""
    port: int = Field(default=50053, ge=0, le=65535)
    metrics_port: int = Field(default=9153, ge=0, le=65535)


class WorkerSettings(Endpoint):
    """An engine worker (the InferenceService)."""

    port: int = Field(default=50054, ge=0, le=65535)
    metrics_port: int = Field(default=9154, ge=0, le=65535)
    engine: Literal["transformers", "vllm", "lmdeploy"] = "transformers"
    # Hub model to load at start ("models/<id>" or "<id>"); none: load later through LoadModel.
    model: str | None = None
    adapters: list[str] = Field(default_factory=list)
    # "cpu", "cuda", "auto".
    device: str = "auto"
    # "auto", "bfloat16", "float16", "float32".
    dtype: str = "auto"
    max_model_len: int = Field(default=0, ge=0)
    # Most sequences decoded together (continuous batching).
    max_num_seqs: int = Field(default=32, ge=1)
    # Most LoRA adapters in one batch (vLLM, LmDeploy); 0 turns LoRA off in vLLM. Default 4.
    max_loras: int = Field(default=4, ge=0)
    # Largest LoRA rank vLLM serves. Default 64.
    max_lora_rank: int = Field(default=64, ge=1)
    # vLLM without CUDA graphs / torch.compile; unset: True on CPU, False on GPU.
    enforce_eager: bool | None = None
    # Fraction of GPU memory vLLM / LmDeploy may take, (0, 1]. Default 0.9.
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # Engine-specific keyword arguments (vLLM AsyncEngineArgs, LmDeploy PytorchEngineConfig fields;
    # transformers: max_num_batched_tokens, attn_implementation).
    engine_args: dict[str, Any] = Field(default_factory=dict)
    # Register with the gateway at this gRPC address on start (empty: don't).
    register_with: str | None = None


class GatewaySettings(Endpoint):
    """The OpenAI REST facade (http_port) and its gRPC admin service (port)."""

    port: int = Field(default=50055, ge=0, le=65535)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # /metrics is on the HTTP port
    http_port: int = Field(default=8000, ge=0, le=65535)
    # Worker addresses known at start; more register through GatewayService.RegisterWorker.
    workers: list[str] = Field(default_factory=list)
    # Hosts an admin API key may register as workers: names ("gpu-7.internal"), globs
    # ("*.workers.svc"), IPs or networks ("10.0.0.0/8"), or "host:port". A worker registering with
    # the service token (worker.register_with) may be anywhere; a key may also register addresses
    # the configuration names (Settings.configured_peers). Default: none (the token goes to a
    # worker's address on every health check, so a key must not pick that address freely).
    worker_allow_hosts: list[str] = Field(default_factory=list)
    # Require an API key on /v1/* (keys managed through GatewayService or `swiftmesh keys`).
    require_api_key: bool = False
    # State (API keys) (default <data_dir>/gateway).
    state_dir: Path | None = None
    health_check_interval_s: float = Field(default=2.0, gt=0)
    # API keys and the worker registry: a SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db
    # for replicas sharing one store (default sqlite:///<state_dir>/gateway.db).
    database_url: str | None = None
    # Rate-limit windows: a `limits` storage URI, e.g. redis://host:6379 for replicas counting
    # together (default memory://, each process counts for itself).
    redis_url: str | None = None
    # Requests per minute per client address for callers without an API key (0: unlimited).
    anonymous_requests_per_minute: int = Field(default=0, ge=0)
    # Let a gateway beyond loopback serve /v1 to anyone, unlimited (require_api_key false and
    # anonymous_requests_per_minute 0); without it such a gateway refuses to start.
    allow_anonymous_public: bool = False
    # Proxies / load balancers whose X-Forwarded-For names the client (for per-address limits and
    # logs): IPs or networks, "*" for any (uvicorn's forwarded_allow_ips). Default: loopback only.
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    # Request bounds of the REST API (HTTP 413 / 400 with an OpenAI error naming the param).
    # Largest request body in bytes, checked while reading (chunked bodies too): 10 MiB.
    max_request_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Most chat messages per request.
    max_messages: int = Field(default=2048, ge=1)
    # Most `stop` strings (OpenAI: 4; vLLM: unbounded).
    max_stop: int = Field(default=16, ge=1)
    # Most `logit_bias` entries (OpenAI: 300).
    max_logit_bias: int = Field(default=300, ge=1)
    # Most choices per request: prompts x n.
    max_choices: int = Field(default=256, ge=1)
    # Most generated tokens a request may ask for (max_tokens / max_completion_tokens), on top of
    # the model's context length that every request is checked against (0: the context only).
    max_output_tokens: int = Field(default=0, ge=0)
    # Seconds a client has to send a request's headers, and its whole body, before the gateway
    # answers 408 (body) or closes the connection (headers), so slow clients cannot hold it.
    request_read_timeout_s: float = Field(default=30.0, gt=0)
    # Most open HTTP connections plus requests in progress; above it new requests get 503.
    max_connections: int = Field(default=4096, ge=1)


class TelemetrySettings(BaseModel):
    """Logs and traces: OTLP export only when the standard ``OTEL_*`` variables ask for it."""

    service_namespace: str = "swiftmesh"
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"


class Settings(BaseSettings):
    """All settings; each service reads its own section and the shared ones."""

    model_config = SettingsConfigDict(
        env_prefix="SWIFTMESH_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # Set by Settings.load(config_file=...) before construction.
    _yaml_file: ClassVar[Path | None] = None

    data_dir: Path = DEFAULT_DATA_DIR
    # Shared token between services ("authorization: Bearer <token>"); unset: no auth.
    auth_token: SecretStr | None = None
    tls: TLSSettings = Field(default_factory=TLSSettings)
    # Other peers ("host:port") the token may be sent to when a request names them (e.g. the hub
    # of a hub:// source); the configured service addresses and gateway.workers always are.
    trusted_peers: list[str] = Field(default_factory=list)
    # Default deadline of unary client calls, seconds.
    rpc_timeout_s: float = Field(default=30.0, gt=0)
    # Grace period of a draining server, seconds.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Largest gRPC message, bytes.
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    hub: HubSettings = Field(default_factory=HubSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    aligner: AlignerSettings = Field(default_factory=AlignerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(str(v))).absolute()

    @field_validator("auth_token")
    @classmethod
    def _token_not_empty(cls, v: SecretStr | None) -> SecretStr | None:
        # An empty token would make every service accept "authorization: Bearer " and pass the
        # exposure check: refuse it rather than silently turning authentication off.
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("SWIFTMESH_AUTH_TOKEN is empty or blank: set a long random token (e.g. "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or leave "
                             "it unset for no authentication (loopback only)")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: init arguments, then environment, then the YAML file, then defaults."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls._yaml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from flags (``overrides``), environment, YAML file and defaults.

        ``config_file`` defaults to ``$SWIFTMESH_CONFIG``. Nested overrides use dicts
        (``hub={"port": 6000}``). Raises :class:`ConfigError` listing every invalid setting,
        or naming a config file that does not exist.
        """
        path = config_file or os.environ.get("SWIFTMESH_CONFIG")
        if path:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist")
        try:
            cls._yaml_file = Path(path) if path else None
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']} (got {err.get('input')!r})"
                for err in e.errors()
            )
            raise ConfigError(f"invalid settings: {problems}") from None
        finally:
            cls._yaml_file = None

    # Derived locations ------------------------------------------------------------
    @property
    def hub_cache_dir(self) -> Path:
        """The hub cache directory (``hub.cache_dir`` or ``<data_dir>/hub``)."""
        return self.hub.cache_dir or self.data_dir / "hub"

    @property
    def trainer_state_dir(self) -> Path:
        """The trainer state directory (``trainer.state_dir`` or ``<data_dir>/trainer``)."""
        return self.trainer.state_dir or self.data_dir / "trainer"

    @property
    def aligner_state_dir(self) -> Path:
        """The aligner state directory (``aligner.state_dir`` or ``<data_dir>/aligner``)."""
        return self.aligner.state_dir or self.data_dir / "aligner"

    @property
    def gateway_state_dir(self) -> Path:
        """The gateway state directory (``gateway.state_dir`` or ``<data_dir>/gateway``)."""
        return self.gateway.state_dir or self.data_dir / "gateway"

    def configured_peers(self) -> set[str]:
        """Every "host:port" this configuration names: the target of each service whose address,
        host or port is set (flags, environment or YAML; a default port names nothing, since any
        local process could listen there), ``gateway.workers`` and ``trusted_peers``. The service
        token goes to these only, when a request names a peer."""
        peers = {self.endpoint(s).target for s in ("hub", "trainer", "aligner", "worker", "gateway")
                 if s in self.model_fields_set
                 and self.endpoint(s).model_fields_set & {"address", "host", "port"}}
        return peers | set(self.gateway.workers) | set(self.trusted_peers)

    def endpoint(self, service: str) -> Endpoint:
        """The endpoint settings of a service by name: hub, trainer, aligner, worker, gateway."""
        try:
            return getattr(self, service)
        except AttributeError:
            raise ConfigError(f"unknown service {service!r}") from None
