"""A prompt as the model sees it: text, chat messages (with the model's chat template) or token ids,
rendered to the token ids vLLM runs; a chat with images goes through vLLM's own renderer once."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from services.engine.errors import InvalidRequestError
from services.engine.generation import ChatTurn, ImageInput, Prompt
from services.engine.vllm_adapter.tool_calls import template_tool_calls, template_tools

_T = TypeVar("_T")

# Tokenizing or templating more than this many characters goes to a thread, off the event loop; a message
# counts as this many characters (templating 100,000 empty messages takes seconds).
_INLINE_TOKENIZE_CHARS = 4096
_CHARS_PER_MESSAGE = 128


@dataclass(frozen=True)
class ImageLimits:
    """Checked from an image's header before it is decoded: a few KB of PNG can declare 100 M pixels,
    which decoding and the model's processor turn into gigabytes."""

    max_pixels: int = 16 * 1024 * 1024
    max_side: int = 8192


class PromptRenderer:
    """Bound to one model's AsyncLLM and tokenizer."""

    def __init__(
        self, llm: Any, model_name: str, image_limits: ImageLimits = ImageLimits(), chat_template: str | None = None
    ) -> None:
        self._image_limits = image_limits
        # Over the model folder's own (None: the folder's).
        self._chat_template = chat_template
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self._model_name = model_name
        self._max_model_len = llm.model_config.max_model_len
        # Set by measure_tokens(); until then no text is refused for its length before it is tokenized.
        self._longest_token_bytes: int | None = None

    def measure_tokens(self) -> None:
        """Finds the vocabulary's longest token in UTF-8 bytes (a fraction of a second for 50k tokens: call
        it in a thread). A text of more bytes than the context length times that holds more tokens than the
        context: it is refused without being tokenized. A token decoded alone is never shorter than what it
        adds to a text (a lone byte of a multi-byte character decodes to U+FFFD, three bytes); the margin
        covers a space the decoder's clean-up may drop."""
        texts = self._tokenizer.batch_decode([[i] for i in range(len(self._tokenizer))])
        self._longest_token_bytes = max(len(t.encode("utf-8", "surrogatepass")) for t in texts) + 4

    def _check_fits(self, where: str, text_bytes: int) -> None:
        longest = self._longest_token_bytes
        if longest is not None and text_bytes > self._max_model_len * longest:
            raise InvalidRequestError(
                f"{where} holds at least {text_bytes} bytes: more than {self._max_model_len} tokens of at most"
                f" {longest} bytes each, this model's context length (`{self._model_name}`);"
                " it is refused without being tokenized"
            )

    def _check_text_fits(self, where: str, text: str) -> None:
        if self._longest_token_bytes is not None and len(text) * 4 > self._max_model_len * self._longest_token_bytes:
            self._check_fits(where, len(text.encode("utf-8", "surrogatepass")))

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    async def render(
        self, prompt: Prompt, add_special_tokens: bool, add_generation_prompt: bool, *, for_generation: bool
    ) -> tuple[list[int], Any]:
        """(the prompt's token ids as the model sees them, the prompt to hand vLLM). A chat with images
        is rendered by vLLM's own renderer, as its OpenAI server does: the templated text plus the
        decoded images go through the model's processor once, which inserts the image placeholder
        tokens; the ids counted (and billed, and returned by /tokenize) are the ones vLLM then runs."""
        images = [
            (f"messages[{i}].content[{j}].image_url", part)
            for i, turn in enumerate(prompt.chat or ())
            for j, part in enumerate(turn.parts or ())
            if isinstance(part, ImageInput)
        ]
        if not images:
            from vllm.inputs import TokensPrompt

            ids = await self._token_ids(prompt, add_special_tokens, add_generation_prompt)
            return ids, TokensPrompt(prompt_token_ids=ids)
        config = self._llm.model_config
        if not config.is_multimodal_model:
            raise InvalidRequestError(f"The model `{self._model_name}` takes no images: send text only.")
        limit = config.multimodal_config.get_limit_per_prompt("image")
        if len(images) > limit:
            raise InvalidRequestError(
                f"At most {limit} image(s) per request for the model `{self._model_name}`; got {len(images)}."
            )
        decoded = await asyncio.to_thread(_decode_images, images, self._image_limits)
        text = await self._chat_text(prompt, add_generation_prompt)
        engine_input = await self._render_with_images(text, decoded, for_generation)
        return list(engine_input["prompt_token_ids"]), engine_input

    async def embedding_input(
        self, index: int, given: str | list[int], max_model_len: int, truncate: int | None = None, name: str = "input"
    ) -> list[int]:
        """The token ids one embedding input runs as: a text with the model's special tokens, or ids as
        given (each checked against the vocabulary); at most the model's context length, or cut to
        `truncate` tokens when that is set."""
        if isinstance(given, str):
            if not given:
                raise InvalidRequestError(f"{name} {index} is empty")
            if truncate is None:
                self._check_text_fits(f"{name} {index}", given)
                ids = await _off_loop(len(given), self._tokenizer.encode, given, add_special_tokens=True)
            else:
                ids = await _off_loop(
                    len(given),
                    self._tokenizer.encode,
                    given,
                    add_special_tokens=True,
                    truncation=True,
                    max_length=truncate,
                )
        else:
            if not given:
                raise InvalidRequestError(f"input {index} has no token ids")
            vocab = self.vocab_size
            bad = next((t for t in given if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequestError(f"input {index}: token id {bad} is not in the vocabulary (size {vocab})")
            ids = list(given)
        if len(ids) > max_model_len:
            raise InvalidRequestError(
                f"{name} {index} has {len(ids)} tokens; this model takes at most {max_model_len} per {name}"
            )
        return ids

    async def score_pair(
        self, index: int, query: str, document: str, max_model_len: int, truncate: int | None
    ) -> tuple[list[int], int]:
        """One query-document pair as a cross-encoder runs it: the tokenizer's pair encoding (special tokens
        included), and where the document's tokens start (its token type ids, compressed as vLLM's own
        score path sends them). At most the model's length, or cut to `truncate` tokens (longest first)."""
        if not query:
            raise InvalidRequestError("the query is empty")
        if not document:
            raise InvalidRequestError(f"document {index} is empty")
        size = len(query) + len(document)
        if truncate is None:
            self._check_text_fits(f"document {index} with its query", query + document)
            pair = await _off_loop(size, self._tokenizer, text=query, text_pair=document)
        else:
            pair = await _off_loop(
                size, self._tokenizer, text=query, text_pair=document, truncation="longest_first", max_length=truncate
            )
        ids = list(pair["input_ids"])
        if len(ids) > max_model_len:
            raise InvalidRequestError(
                f"document {index} with its query has {len(ids)} tokens; this model takes at most {max_model_len}"
                " per pair (set truncate_prompt_tokens to cut it)"
            )
        types = pair.get("token_type_ids")
        return ids, (types.index(1) if types and 1 in types else len(ids))

    async def decode(self, token_ids: list[int]) -> str:
        vocab = self.vocab_size
        bad = [t for t in token_ids if t >= vocab]
        if bad:
            raise InvalidRequestError(f"token ids out of the vocabulary (size {vocab}): {bad[:5]}")
        return await _off_loop(len(token_ids), self._tokenizer.decode, token_ids)

    async def _render_with_images(self, text: str, images: list[Any], for_generation: bool) -> Any:
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        renderer = self._llm.renderer
        prompt = parse_model_prompt(self._llm.model_config, {"prompt": text, "multi_modal_data": {"image": images}})
        try:
            # vLLM's processor cache here mirrors its engine core's: only what is sent may be cached, so
            # /tokenize skips it, as vLLM's own /tokenize does. (A request refused after rendering leaves
            # an entry the engine core never got; vLLM then has the item resent, as in its own server.)
            (engine_input,) = await renderer.render_cmpl_async(
                [prompt], renderer.default_cmpl_tok_params, skip_mm_cache=not for_generation
            )
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"the model's processor rejected the images: {exc}") from exc
        return engine_input

    async def _token_ids(self, prompt: Prompt, add_special_tokens: bool, add_generation_prompt: bool) -> list[int]:
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            vocab = self.vocab_size
            if any(t >= vocab for t in ids):
                raise InvalidRequestError(f"prompt token ids must be below the vocabulary size {vocab}")
        elif prompt.chat is not None:
            text = await self._chat_text(prompt, add_generation_prompt)
            self._check_text_fits("the templated chat", text)
            # The template already wrote the special tokens (as vLLM's chat path does).
            ids = await _off_loop(len(text), self._tokenizer.encode, text, add_special_tokens=False)
        elif prompt.text is not None:
            self._check_text_fits("the prompt", prompt.text)
            ids = await _off_loop(
                len(prompt.text), self._tokenizer.encode, prompt.text, add_special_tokens=add_special_tokens
            )
        else:
            raise InvalidRequestError("the request has no prompt: give text, chat messages or token ids")
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        return ids

    async def _chat_text(self, prompt: Prompt, add_generation_prompt: bool) -> str:
        chat = prompt.chat
        if not chat:
            raise InvalidRequestError("messages must hold at least one message")
        content = sum(len(turn.content) for turn in chat)
        self._check_fits("the messages' content", content)
        messages = [_chat_message(i, turn) for i, turn in enumerate(chat)]
        tools = template_tools(prompt.tools)
        size = content + _CHARS_PER_MESSAGE * len(chat) + (len(json.dumps(tools)) if tools else 0)
        try:
            return await _off_loop(
                size,
                self._tokenizer.apply_chat_template,
                messages,
                tools=tools,
                chat_template=self._chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # jinja raises TemplateError and friends on bad conversations
            raise InvalidRequestError(f"the chat template rejected the messages: {exc}") from exc


def _decode_images(images: list[tuple[str, ImageInput]], limits: ImageLimits) -> list[Any]:
    """(where in the request, image) pairs -> RGB images, or InvalidRequestError naming the part."""
    from PIL import Image, UnidentifiedImageError

    decoded = []
    for where, image in images:
        try:
            with Image.open(io.BytesIO(image.data)) as opened:
                _check_size(where, opened.size, limits)
                decoded.append(opened.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidRequestError(
                f"{where}: the image ({image.media_type or 'no media type'}) could not be decoded: {exc}"
            ) from exc
    return decoded


def _check_size(where: str, size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width > limits.max_side or height > limits.max_side:
        raise InvalidRequestError(
            f"{where}: the image is {width}x{height}; each side may be at most {limits.max_side} pixels"
        )
    if width * height > limits.max_pixels:
        raise InvalidRequestError(
            f"{where}: the image is {width}x{height} = {width * height} pixels;"
            f" at most {limits.max_pixels} are accepted"
        )


def _chat_message(index: int, turn: ChatTurn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": turn.role.value, "content": turn.content}
    if turn.parts is not None:
        message["content"] = [
            {"type": "text", "text": part} if isinstance(part, str) else {"type": "image"} for part in turn.parts
        ]
    if turn.name:
        message["name"] = turn.name
    if turn.tool_call_id:
        message["tool_call_id"] = turn.tool_call_id
    if turn.tool_calls:
        message["tool_calls"] = template_tool_calls(index, turn)
    return message


async def _off_loop(size: int, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    if size <= _INLINE_TOKENIZE_CHARS:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
