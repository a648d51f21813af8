"""One request's stream: counts its tokens and times as vLLM's outputs arrive, and turns each output
into a GenerationUpdate."""

from __future__ import annotations

import time
from typing import Any

from services.engine.generation import (
    ChoiceDelta,
    FinishReason,
    GenerationUpdate,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    "error": FinishReason.ERROR,
    # vLLM's repetition detector ends a choice as a stop would.
    "repetition": FinishReason.STOP,
}


class StreamState:
    """With n > 1, vLLM runs one child request per choice, each with its own prefix-cache hits, while the
    prompt is billed once: the cached tokens are those cached for every choice (the minimum), whatever
    order the choices report in."""

    def __init__(self, prompt_tokens: int, started: float) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cached_by_choice: dict[int, int] = {}
        self.started = started
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.queue_seconds = 0.0
        self.finished = False
        self.started_output = False
        self.announced = False
        self.finish_reasons: dict[int, FinishReason] = {}
        self.error: str | None = None
        self.unfinished_choices: set[int] = set()
        self.finished_choices: set[int] = set()

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def timings(self) -> Timings:
        now = time.monotonic()
        first = self.first_token_at or now
        last = self.last_token_at or first
        return Timings(
            queue_seconds=self.queue_seconds,
            time_to_first_token_seconds=(first - self.started) if self.first_token_at else 0.0,
            generation_seconds=last - first,
            total_seconds=now - self.started,
        )

    def final_reasons(self) -> list[FinishReason]:
        """Each choice's finish reason, in order; a choice cut before its last output (the caller went
        away) was aborted by vLLM."""
        reasons = dict(self.finish_reasons)
        for index in self.unfinished_choices:
            reasons.setdefault(index, FinishReason.ABORT)
        return [reasons[i] for i in sorted(reasons)]

    def update(self, output: Any, logprobs: int | None) -> GenerationUpdate:
        if not self.started_output and output.prompt_token_ids:
            # vLLM's own count (with images: after its processor inserted their placeholder tokens).
            self.prompt_tokens = len(output.prompt_token_ids)
        self.started_output = True
        now = time.monotonic()
        choices = []
        for completion in output.outputs:
            self.cached_by_choice[completion.index] = output.num_cached_tokens or 0
            ids = list(completion.token_ids)
            if ids:
                self.completion_tokens += len(ids)
                if self.first_token_at is None:
                    self.first_token_at = now
                self.last_token_at = now
            delta = _choice_delta(completion, ids, logprobs)
            choices.append(delta)
            if delta.finish_reason is None:
                self.unfinished_choices.add(completion.index)
            else:
                self.unfinished_choices.discard(completion.index)
                self.finished_choices.add(completion.index)
                self.finish_reasons[completion.index] = delta.finish_reason
        if self.cached_by_choice:
            self.cached_tokens = min(self.cached_by_choice.values())
        self.finished = bool(output.finished)
        timings = None
        if self.finished:
            stats = output.metrics
            if stats is not None and stats.scheduled_ts and stats.queued_ts:
                self.queue_seconds = max(0.0, stats.scheduled_ts - stats.queued_ts)
            timings = self.timings()
        return GenerationUpdate(choices=choices, usage=self.usage(), finished=self.finished, timings=timings)

    def failure(self, message: str, model: str) -> GenerationUpdate:
        """The final update of a request that failed after it started: open choices end with ERROR.
        Its usage is reported, so it counts."""
        self.finished = True
        self.started_output = True
        self.error = message
        choices = [
            ChoiceDelta(index=i, text="", token_ids=[], finish_reason=FinishReason.ERROR)
            for i in sorted(self.unfinished_choices)
        ]
        for choice in choices:
            self.finish_reasons[choice.index] = FinishReason.ERROR
        self.unfinished_choices.clear()
        return GenerationUpdate(
            choices=choices, usage=self.usage(), finished=True, timings=self.timings(), error=message, model=model
        )


def _choice_delta(completion: Any, ids: list[int], logprobs: int | None) -> ChoiceDelta:
    delta = ChoiceDelta(index=completion.index, text=completion.text, token_ids=ids)
    if logprobs is not None and completion.logprobs is not None:
        delta.logprobs = [
            _token_logprob(token_id, position, logprobs) for token_id, position in zip(ids, completion.logprobs)
        ]
    if completion.finish_reason is not None:
        delta.finish_reason = _FINISH_REASONS.get(str(completion.finish_reason), FinishReason.STOP)
        stop = completion.stop_reason
        if isinstance(stop, str):
            delta.stop_string = stop
        elif isinstance(stop, int):
            delta.stop_token_id = stop
    return delta


def _token_logprob(token_id: int, position: dict[int, Any], top_n: int) -> TokenLogprob:
    chosen = position[token_id]
    ranked = sorted(
        ((tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= top_n),
        key=lambda item: item[1].rank,
    )
    return TokenLogprob(
        token_id=token_id,
        token=chosen.decoded_token or "",
        logprob=chosen.logprob,
        top=tuple(TopLogprob(tid, lp.decoded_token or "", lp.logprob) for tid, lp in ranked),
    )
