"""A price file a user keeps in git, YAML or CSV, read into price rows with every problem listed (nothing
is applied unless there is none). A row: model, currency, effective_from (ISO time or Unix seconds;
left out: now), prompt, cached_prompt (left out: the prompt price) and completion, each per million
tokens in the currency's major unit; optionally image (per image in a prompt) and embedding_input (per
input of an embeddings request), per unit.

    currency: USD
    prices:
      - {model: SmolLM2-135M-Instruct, prompt: "0.15", cached_prompt: "0.075", completion: "0.60"}
      - {model: SmolLM2-135M-Instruct, effective_from: 2027-01-01T00:00:00Z, prompt: "0.12", completion: "0.50"}

or, as CSV, the header `model,currency,effective_from,prompt,cached_prompt,completion` (and `image`,
`embedding_input`)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

import yaml

from services.metering.account_errors import InvalidChange
from services.metering.pricing import CURRENCIES, micro_amount

_KNOWN = {"model", "currency", "effective_from", "prompt", "cached_prompt", "completion", "image", "embedding_input"}
_OPTIONAL = ("cached_prompt", "image", "embedding_input")


class InvalidPrices(InvalidChange):
    """Every problem of a price import, one per line (INVALID_ARGUMENT); nothing was applied."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("prices: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PriceRow:
    model_name: str
    currency: str
    effective_from: float | None
    prompt: int
    cached_prompt: int
    completion: int
    image: int = 0
    embedding_input: int = 0


def _moment(value: object) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def read_rows(raw: list[dict], default_currency: str = "") -> list[PriceRow]:
    """Rows checked one by one and together (no model twice at one time, one currency); InvalidPrices
    with every problem."""
    problems: list[str] = []
    rows: list[PriceRow] = []
    for number, given in enumerate(raw, start=1):
        where = f"row {number}"
        if not isinstance(given, dict):
            problems.append(f"{where}: not a mapping of fields")
            continue
        unknown = sorted(set(given) - _KNOWN)
        if unknown:
            problems.append(f"{where}: unknown fields {unknown}")
        model = str(given.get("model") or "").strip()
        if not model or len(model) > 256:
            problems.append(f"{where}: model: a model name is required (at most 256 characters)")
        currency = str(given.get("currency") or default_currency).strip().upper()
        if currency not in CURRENCIES:
            problems.append(f"{where}: currency: {currency or 'none'} is not one of {', '.join(sorted(CURRENCIES))}")
        effective = None
        if given.get("effective_from") not in (None, ""):
            try:
                effective = _moment(given["effective_from"])
            except (ValueError, OverflowError):
                problems.append(f"{where}: effective_from: {given['effective_from']!r} is not a time")
        amounts = {}
        for field in ("prompt", "completion", *_OPTIONAL):
            value = given.get(field)
            if value in (None, ""):
                if field not in _OPTIONAL:
                    problems.append(f"{where}: {field}: a price is required")
                continue
            try:
                amounts[field] = micro_amount(value, field)
            except InvalidChange as error:
                problems.append(f"{where}: {error}")
        if "prompt" in amounts and "completion" in amounts and not unknown and model and currency in CURRENCIES:
            rows.append(
                PriceRow(
                    model,
                    currency,
                    effective,
                    amounts["prompt"],
                    amounts.get("cached_prompt", amounts["prompt"]),
                    amounts["completion"],
                    amounts.get("image", 0),
                    amounts.get("embedding_input", 0),
                )
            )
    currencies = {row.currency for row in rows}
    if len(currencies) > 1:
        problems.append(f"currency: one price book has one currency, not {', '.join(sorted(currencies))}")
    seen: set[tuple[str, float | None]] = set()
    for row in rows:
        if (row.model_name, row.effective_from) in seen:
            problems.append(f"{row.model_name}: two prices start at the same time")
        seen.add((row.model_name, row.effective_from))
    if not raw:
        problems.append("no prices given")
    if problems:
        raise InvalidPrices(problems)
    return rows


def _valid_text(value: object) -> bool:
    """Whether every string in it UTF-8 encodes (YAML's "\\ud845" escape makes a lone surrogate, which no
    error message or database could carry)."""
    if isinstance(value, str):
        return value == value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return all(_valid_text(k) and _valid_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_valid_text(v) for v in value)
    return True


def parse(text: str, kind: str) -> list[PriceRow]:
    """kind: "yaml" or "csv"."""
    if kind == "csv":
        return read_rows([dict(row) for row in csv.DictReader(io.StringIO(text))])
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidPrices([f"not YAML: {error}"]) from None
    if not _valid_text(document):
        raise InvalidPrices(["not valid Unicode text (it holds a lone surrogate)"])
    if isinstance(document, list):
        return read_rows(document)
    if not isinstance(document, dict) or not isinstance(document.get("prices"), list):
        raise InvalidPrices(["a YAML price file is a list of prices, or a mapping with `prices` (and `currency`)"])
    return read_rows(document["prices"], str(document.get("currency") or ""))
