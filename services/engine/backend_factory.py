"""Builds a model's vLLM backend from a launch: its source resolved to a folder, its vLLM arguments from
the engine's settings, the source's needs and the launch's own overrides."""

from __future__ import annotations

from pathlib import Path

from services.engine.builtin_models import resolve_source
from services.engine.config import CPU_LORA_BASE_ADAPTER, EngineSettings
from services.engine.errors import InvalidRequestError
from services.engine.model_host import BackendFactory, LaunchSpec
from services.engine.served import ServedModel
from services.engine.usage.accounting import EngineUsage
from services.engine.vllm_adapter import VllmBackend
from services.engine.vllm_adapter.prompts import ImageLimits
from services.engine.vllm_adapter.tool_calls import known_tool_parsers


def backend_factory(settings: EngineSettings, on_cpu: bool, started_uid: str | None) -> BackendFactory:
    """`started_uid` is the model the engine starts with: it gets the engine's settings as they are; the
    others are launched at run time (see EngineSettings.engine_args_for)."""

    def build(spec: LaunchSpec, usage: EngineUsage) -> VllmBackend:
        from vllm.engine.arg_utils import AsyncEngineArgs

        try:
            source = resolve_source(spec.source, settings.model_store)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from exc
        started = spec.uid == started_uid
        flags = {"tool_call_parser": settings.tool_call_parser, "chat_template": settings.chat_template}
        args = settings.engine_args_for(
            source.path,
            on_cpu,
            served_name=spec.uid,
            launched=not started,
            overrides=source.engine_args | {k: v for k, v in flags.items() if started and v} | spec.engine_args,
        )
        base_adapter = on_cpu and CPU_LORA_BASE_ADAPTER and bool(args.get("enable_lora"))
        if base_adapter:
            # The base model's requests hold a slot of a batch's adapters too.
            args["max_loras"] = args.get("max_loras", 1) + 1
        # Not vLLM's engine arguments but its server's flags, per model here.
        tool_call_parser = args.pop("tool_call_parser", None)
        chat_template = _template_text(args.pop("chat_template", None))
        if tool_call_parser is not None and tool_call_parser not in known_tool_parsers():
            raise InvalidRequestError(
                f"unknown tool_call_parser `{tool_call_parser}`; vLLM has: {', '.join(known_tool_parsers())}"
            )
        try:
            engine_args = AsyncEngineArgs(**args)
        except TypeError as exc:
            raise InvalidRequestError(f"not a vLLM engine argument: {exc}") from exc
        served = ServedModel(name=spec.uid, root=source.path, model_name=spec.model_name)
        limits = ImageLimits(settings.image_max_pixels, settings.image_max_side)
        return VllmBackend(
            engine_args,
            served,
            settings.place_engine_core,
            usage,
            limits,
            tool_call_parser,
            chat_template,
            base_adapter,
        )

    return build


def _template_text(given: str | None) -> str | None:
    """A chat template given as a file's path or as the template itself (as vLLM's --chat-template)."""
    if not given:
        return None
    path = Path(given)
    try:
        if path.is_file():
            return path.read_text()
    except OSError:
        pass
    if "{" not in given:
        raise InvalidRequestError(f"chat_template {given!r} is neither a readable file nor a Jinja template")
    return given
