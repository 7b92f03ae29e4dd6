"""Every serving setting, in one place: a flag, an env var ``LORA_GATEWAY_<NAME>``, a default.

The CLI builds its flags from these fields and the README's settings table is checked against them
by a test, so the three never drift apart. Settings are constructed in ``create_app``'s caller,
never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORA_GATEWAY_", extra="ignore")

    model: str = Field(description="Base model: a Hub id or a local path.")
    served_model_name: str | None = Field(
        default=None, description="Model id clients use for the base model (default: the --model value)."
    )
    extra_base: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Another base model to serve beside --model, each adapter on the base it was trained on: "
        "MODEL or NAME=MODEL (repeat). local: loaded in this process within --memory-budget-gb; "
        "remote: served by the upstreams that list it.",
    )
    memory_budget_gb: float | None = Field(
        default=None,
        gt=0,
        description="local: GiB the bases' weights may take together (default: 0.9 of the GPU's memory, "
        "0.8 of RAM on a CPU); a set of bases past it fails at start.",
    )
    adapters_dir: Path = Field(
        default=Path("adapters"), description="Directory of LoRA adapters, one per sub-directory."
    )
    engine: Literal["local", "vllm", "remote"] = Field(
        default="local",
        description="Inference engine: local (transformers + peft), vllm (AsyncLLM in process), remote (vLLM servers).",
    )
    upstream: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="remote: URL of a `vllm serve --enable-lora` upstream (repeat for several); BASE=URL "
        "declares the base it serves (default: the bases its /v1/models lists).",
    )
    upstream_api_key: SecretStr | None = Field(default=None, description="remote: bearer key the upstreams expect.")
    upstream_first_byte_timeout: float = Field(
        default=10.0,
        gt=0,
        description="remote: seconds an upstream has to start a streamed answer "
        "before the request goes to the next (a plain answer has none: health checks catch a frozen one).",
    )
    upstream_stall_timeout: float = Field(
        default=30.0,
        gt=0,
        description="remote: seconds a streaming upstream may stay silent before it is considered lost.",
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    api_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Inference API key (repeat the flag, or comma-separate in the env var). None: no auth.",
    )
    max_batch_size: int = Field(
        default=16,
        ge=1,
        description="Sequences decoded together (local engine); with fair admission, one more may join "
        "a full batch of four or more for a tenant that has none running.",
    )
    max_prefill_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Prompt tokens the local engine computes in one prefill step, a prefix the prefix cache "
        "holds not counted (default: 128 on CPU, 2048 on a GPU); smaller: a newcomer waits less behind a burst.",
    )
    prefix_cache_mb: int = Field(
        default=512,
        ge=0,
        description="local: MiB of KV kept for prompts' shared beginnings (a system prompt, a conversation so far), "
        "per adapter version, least recently used evicted; 0: off.",
    )
    onednn_linears: bool = Field(
        default=True,
        description="local, on a CPU: compute the model's linear layers with oneDNN's inner product instead of "
        "torch's default GEMM (a decode step about 0.7x the time on the benchmark machine); off: torch's default.",
    )
    max_queued_requests: int = Field(
        default=256,
        ge=1,
        description="Requests of one tenant on one model waiting for the local engine's batch (vllm: for a "
        "LoRA slot); past this, 503 queue_full with Retry-After.",
    )
    fair_admission: bool = Field(
        default=True,
        description="Admit waiting requests fairly between tenants and models; a newcomer joins even a full batch "
        "(one row past it), its prefill goes alone and its first text goes first (off: first come, first served).",
    )
    grammar_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a request's JSON schema or tools may take to compile into a grammar (local engine); "
        "longer: 400 grammar_too_complex.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context window, prompt + completion (default: the model's)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where the local engine runs.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype (auto: bf16/fp16 on CUDA, float32 on CPU)."
    )
    admin_key: SecretStr | None = Field(
        default=None, description="Key for the admin API (/v1/adapters, load/unload). None: admin API disabled."
    )
    watch_poll: float | None = Field(
        default=None,
        gt=0,
        description="Poll the adapters directory every N seconds instead of inotify (NFS, bind mounts).",
    )
    max_loaded_adapters: int = Field(
        default=64, ge=1, description="Adapter versions the engine holds at once; least recently used are evicted."
    )
    keep_versions: int = Field(
        default=5,
        ge=1,
        description="Proven versions of each adapter kept under <adapters-dir>/.kept for restarts and rollback "
        "(pinned versions are kept besides).",
    )
    eval_gate_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Upper bound in seconds on one adapter's eval gate run (its eval.json may set less).",
    )
    judges: Path | None = Field(
        default=None,
        description='JSON file of the judges an eval.json may name: {"NAME": {"url", "model", "api_key_env"}} '
        "(keys are read from those environment variables at start-up).",
    )
    base_model_alias: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Other names of the base model that adapters may "
        "declare (repeat, or comma-separate in the env var); ALIAS=BASE names another served base's.",
    )
    max_lora_rank: int = Field(
        default=64,
        ge=1,
        description="Adapters above this rank are refused (vllm: one of 1, 8, 16, 32, 64, 128, 256, 320, 512).",
    )
    max_loras: int = Field(
        default=4, ge=1, description="vllm: adapters batched together on the GPU (vLLM's --max-loras)."
    )
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="vllm: adapters cached in host memory (default: --max-loaded-adapters)."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="vllm: GPUs to shard the model over.")
    gpu_memory_utilization: float = Field(
        default=0.92, gt=0, le=1, description="vllm: fraction of GPU memory vLLM may take."
    )
    max_adapter_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="Adapters whose weights exceed this are refused."
    )
    adapter_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URL prefixes (s3://BUCKET/PREFIX, hf://ORG/) an admin's /v1/load_lora_adapter may fetch "
        "adapters from (repeat, or comma-separate). None: local paths only.",
    )
    adapters_source: str | None = Field(
        default=None,
        description="A remote location (s3://BUCKET/PREFIX) whose sub-folders are adapters: polled, and each new "
        "version published into --adapters-dir, so a fleet of gateways follows one bucket.",
    )
    adapters_source_interval: float = Field(
        default=30.0, gt=0, description="Seconds between two looks at --adapters-source."
    )
    source_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["s3", "hf"],
        description="URL schemes adapters may come from (s3, hf, or any fsspec protocol whose driver is installed).",
    )
    source_options: dict[str, dict[str, str | int | float | bool]] = Field(
        default_factory=dict,
        description='fsspec options per scheme, as JSON: {"s3": {"endpoint_url": "http://minio:9000"}}. '
        "Credentials come from the environment (AWS_*, HF_TOKEN), or here.",
    )
    source_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to connect or read while fetching one adapter file from a source."
    )
    max_request_bytes: int = Field(default=2 * 1024**2, ge=1024, description="Request bodies above this get 413.")
    body_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a client may take to send a request body; slower ones get 408."
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a request's "
        "headers (idle new ones too); slower ones get 408.",
    )
    max_header_bytes: int = Field(default=32768, ge=1024, description="Request line and headers above this get 431.")
    keep_alive_timeout: float = Field(
        default=5.0, gt=0, description="Seconds an idle keep-alive connection is kept open."
    )
    limit_concurrency: int | None = Field(
        default=1024,
        ge=1,
        description="Connections served at once; past this, new requests get 503 (uvicorn's --limit-concurrency).",
    )
    default_max_tokens: int | None = Field(
        default=1024,
        ge=1,
        description="Completion tokens when a request sets no max_tokens "
        "(a request's own value wins, up to the context).",
    )
    allow_long_context: bool = Field(
        default=False,
        description="Accept a --max-model-len beyond the model's max_position_embeddings (quality is not guaranteed).",
    )
    max_n: int = Field(default=8, ge=1, description="Largest `n` (choices per request) accepted.")
    playground: bool = Field(
        default=True, description="Serve /playground (side-by-side comparison and blind rating; needs the API key)."
    )
    ratings_file: Path | None = Field(
        default=None,
        description="Where the playground's blind ratings are appended (default: <adapters-dir>/.ratings.jsonl; "
        "with --feedback, the feedback database).",
    )
    limits_storage: Literal["memory", "database"] = Field(
        default="memory",
        description="Where API keys' rate-limit and quota windows are counted: memory (one gateway process) "
        "or database (every gateway sharing --database shares them).",
    )
    feedback: bool = Field(
        default=False,
        description="Capture answered conversations (prompt, answer, model, version, user) so they can be rated "
        "with POST /v1/feedback; see README, Feedback, for what is stored and for how long.",
    )
    database: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the gateway's database: feedback, API keys, usage, limits, audit "
        "(default: sqlite:///<adapters-dir>/.gateway.db; postgresql+psycopg://... to share one between gateways).",
    )
    feedback_retention_days: float = Field(
        default=30.0, gt=0, description="Captured conversations are deleted after this many days."
    )
    responses_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Stored responses (POST /v1/responses with store, the default) are deleted after this many days.",
    )
    fine_tuning: bool = Field(
        default=False,
        description="Offer OpenAI's fine-tuning API (/v1/files, /v1/fine_tuning/jobs) over the trainer: one job at a "
        "time, published like `train` (see docs, Fine-tuning through the API).",
    )
    fine_tuning_device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda|cuda:[0-9]{1,2})$",
        description="Where jobs train: cpu (at low priority), cuda (the serving GPU, within "
        "--fine-tuning-gpu-memory-fraction), cuda:N (a second GPU), or auto (cpu beside a CPU engine; on a GPU, "
        "cuda when a memory fraction is set).",
    )
    fine_tuning_gpu_memory_fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="The share of the serving GPU's memory a job may use (the engine keeps the rest).",
    )
    fine_tuning_nice: int = Field(
        default=19,
        ge=0,
        le=19,
        description="The niceness of a job training on the CPU (19: serving always comes first).",
    )
    fine_tuning_active_jobs: int = Field(
        default=2, ge=1, le=100, description="Queued and running fine-tuning jobs one key may have at once."
    )
    fine_tuning_daily_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Training tokens one key's jobs may use in 24 hours, counted as each job's file bytes times "
        "its epochs (a byte-level tokenizer makes no more tokens than bytes); default: no limit.",
    )
    max_file_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="The largest file POST /v1/files takes, in bytes."
    )
    wecom_config: Path | None = Field(
        default=None,
        description="YAML or JSON file of WeCom bots (see README, WeCom); env LORA_GATEWAY_WECOM_* adds to it.",
    )
    shutdown_timeout: float = Field(
        default=5.0,
        ge=0,
        description="On Ctrl-C/SIGTERM: seconds running requests may finish before their streams are ended.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    workers: int = Field(
        default=1,
        ge=1,
        description="Server processes. Only 1: each would load the model and keep its own adapters, "
        "watcher and WeCom state (README: The gateway's own cost).",
    )

    @model_validator(mode="after")
    def _bases_fit_the_engine(self) -> Settings:
        if self.extra_base and self.engine == "vllm":
            raise ValueError(
                "--extra-base: vLLM in this process serves one base; serve each base with its own `vllm serve` "
                "and put --engine remote in front of them"
            )
        return self

    @field_validator("workers")
    @classmethod
    def _one_worker(cls, value: int) -> int:
        if value > 1:
            raise ValueError(
                "one process per gateway: each worker would load the model again and keep its own adapter "
                "registry, watcher and WeCom state; scale with more vLLM replicas behind one gateway (--engine remote)"
            )
        return value

    @field_validator(
        "api_key", "base_model_alias", "upstream", "adapter_sources", "source_schemes", "extra_base", mode="before"
    )
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("source_options", mode="before")
    @classmethod
    def _json_options(cls, value: object) -> object:
        if isinstance(value, str):  # the flag, as the env var: JSON
            import json

            return json.loads(value) if value.strip() else {}
        return value

    @property
    def base_model_id(self) -> str:
        """The id clients use for the base model; vLLM defaults it to the --model value too."""
        return self.served_model_name or self.model

    @property
    def extra_bases(self) -> dict[str, str]:
        """``--extra-base`` as id -> model (``NAME=MODEL``, else the model is its own id)."""
        bases: dict[str, str] = {}
        for item in self.extra_base:
            name, sep, model = item.partition("=")
            bases[name if sep else item] = model if sep else item
        return bases

    def aliases_of(self, base_id: str) -> list[str]:
        """``--base-model-alias`` values for ``base_id``: ``ALIAS=BASE`` ones, and plain ones for the default."""
        found = []
        for alias in self.base_model_alias:
            name, sep, target = alias.partition("=")
            if (sep and target == base_id) or (not sep and base_id == self.base_model_id):
                found.append(name if sep else alias)
        return found


def markdown_table() -> str:
    """The settings as the docs' table (flag, env var, default, meaning), built from the fields
    themselves so that it cannot drift from them; ``docs/hooks.py`` puts it into the operations page."""
    rows = ["| flag | env var | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        flags = f"`{flag}` / `--no-{flag[2:]}`" if field.annotation is bool else f"`{flag}`"
        if field.is_required():
            default = "*(required)*"
        elif field.default_factory is not None or field.default in (None, []):
            default = "*(unset)*"
        else:
            value = field.default
            default = f"`{str(value).lower() if isinstance(value, bool) else value}`"
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| {flags} | `LORA_GATEWAY_{name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
