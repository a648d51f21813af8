"""The engine's per-request counting, fed vLLM-shaped outputs (no model)."""

from types import SimpleNamespace

from services.engine.vllm_adapter.stream_state import StreamState


def _output(
    index: int, token_ids: list[int], cached: int, finished: bool = False, prompt_token_ids: list[int] | None = None
) -> SimpleNamespace:
    completion = SimpleNamespace(
        index=index,
        text="x" * len(token_ids),
        token_ids=token_ids,
        logprobs=None,
        finish_reason="length" if finished else None,
        stop_reason=None,
    )
    return SimpleNamespace(
        outputs=[completion],
        num_cached_tokens=cached,
        finished=finished,
        metrics=None,
        prompt_token_ids=prompt_token_ids,
    )


def test_cached_tokens_with_several_choices_do_not_depend_on_report_order() -> None:
    results = []
    for order in ([(0, 0), (1, 16)], [(1, 16), (0, 0)]):
        state = StreamState(prompt_tokens=20, started=0.0)
        for index, cached in order:
            state.update(_output(index, [1, 2], cached), logprobs=None)
        for index, cached in order:
            state.update(_output(index, [3], cached, finished=True), logprobs=None)
        results.append(state.usage())
    assert results[0] == results[1]
    assert results[0].cached_tokens == 0
    assert results[0].completion_tokens == 6
    assert results[0].prompt_tokens == 20


def test_cached_tokens_of_one_choice() -> None:
    state = StreamState(prompt_tokens=20, started=0.0)
    state.update(_output(0, [1], 16), logprobs=None)
    state.update(_output(0, [2], 16, finished=True), logprobs=None)
    assert state.usage().cached_tokens == 16


def test_prompt_tokens_are_vllm_s_count_once_it_reports_one() -> None:
    """With images, vLLM's processor inserts placeholder tokens: its count is the one billed."""
    state = StreamState(prompt_tokens=12, started=0.0)
    state.update(_output(0, [1], 0, prompt_token_ids=list(range(57))), logprobs=None)
    state.update(_output(0, [2], 0, finished=True), logprobs=None)
    assert state.usage().prompt_tokens == 57
