"""Evaluation tasks: the prompt for a row, its gold answer, and the grading of a completion.

A Task turns a record (a dict from `load_records`) into the user message for a chat model, and
grades that model's completion against the record. Answers on both sides go through the same
normalization, so grading is an exact match of normalized strings; a completion with no
recognizable final answer is simply wrong.
"""

from __future__ import annotations

import dataclasses
import decimal
import re
import string
from collections.abc import Callable, Collection, Sequence
from typing import Any

from kdknob_jax.errors import DataError

LETTERS = string.ascii_uppercase

_MISSING = object()


def _get(record: dict, path: str) -> Any:
  """`record["a"]["b"]` for the dotted path "a.b", or _MISSING."""
  value: Any = record
  for key in path.split("."):
    if not isinstance(value, dict) or key not in value:
      return _MISSING
    value = value[key]
  return value


@dataclasses.dataclass(frozen=True)
class Task:
  """How to prompt for, and grade, one kind of record.

  Attributes:
    name: the name `get_task` knows it by.
    fields: the dotted field paths every record must have ("question.stem").
    render: record -> the user message text.
    gold: record -> the normalized gold answer.
    parse: (completion, allowed labels or None) -> the normalized answer, or None.
    labels: record -> the answer labels it allows (multiple choice), or None.
  """
  name: str
  fields: tuple[str, ...]
  render: Callable[[dict], str] = dataclasses.field(repr=False)
  gold: Callable[[dict], str] = dataclasses.field(repr=False)
  parse: Callable[[str, Collection[str] | None], str | None] = dataclasses.field(repr=False)
  labels: Callable[[dict], Sequence[str] | None] = dataclasses.field(
      default=lambda record: None, repr=False)

  def check(self, record: Any, index: int | None = None) -> None:
    """Raises DataError when `record` lacks a field this task needs.

    Args:
      record: one row.
      index: its row number in the loaded data, for the message.
    """
    where = "row" if index is None else f"row {index}"
    if not isinstance(record, dict):
      raise DataError(f"Task {self.name!r}: {where} is {type(record).__name__}, not a dict.")
    for path in self.fields:
      if _get(record, path) is _MISSING:
        raise DataError(f"Task {self.name!r}: {where} has no field {path!r} (its fields: "
                        f"{sorted(record)}). This task needs {list(self.fields)}; pick the task "
                        f"that matches the file (known: {sorted(TASKS)}) or fix the row.")

  def check_records(self, records: Sequence[dict], start: int = 0) -> None:
    """Checks every record up front, so a bad row fails before any model runs.

    Args:
      records: rows from `load_records`.
      start: the row number of records[0] (the `offset` they were loaded with).
    """
    for i, record in enumerate(records):
      self.check(record, start + i)
      try:
        self.gold(record)  # also rejects a gold answer that cannot be graded
      except DataError as e:
        raise DataError(f"Task {self.name!r}: row {start + i}: {e}") from e

  def prompt(self, record: dict) -> str:
    """The user message to send to a chat model for this record."""
    self.check(record)
    return self.render(record)

  def reference(self, record: dict) -> str:
    """The record's gold answer, normalized like `extract`'s result."""
    self.check(record)
    return self.gold(record)

  def extract(self, completion: str, allowed: Collection[str] | None = None) -> str | None:
    """The model's final answer, normalized; None when it gave none.

    Args:
      completion: the model's reply text.
      allowed: for multiple choice, the labels that count as answers (others are ignored).
    """
    return self.parse(completion or "", allowed)

  def is_correct(self, completion: str, record: dict) -> bool:
    """Whether the completion's final answer equals the gold one (no answer: False)."""
    gold = self.reference(record)
    answer = self.extract(completion, self.labels(record))
    return answer is not None and answer == gold


# --- GSM8K: free-form numbers ------------------------------------------------------------------

# A sign counts only when it does not follow a word or digit, so "16-3-4" is three positives.
# Thousands groups must be exact ("1,234"), so a list "1, 2,3" never fuses into one number.
_NUMBER = re.compile(r"(?:(?<![\w)])[-\u2212])?\$?\s?"
                     r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def normalize_number(text: str) -> str:
  """A canonical spelling of a number: "1,234" -> "1234", "$3.50" -> "3.5", "-0" -> "0".

  Text that is not a number comes back stripped of the same decorations, so two such
  answers still compare as strings.
  """
  cleaned = re.sub(r"[,$\s]", "", text.replace("\u2212", "-")).rstrip(".")
  try:
    value = decimal.Decimal(cleaned)
  except decimal.InvalidOperation:
    return cleaned
  if not value.is_finite():
    return cleaned
  if value == 0:
    return "0"
  # normalize() drops trailing zeros but would print 1200 as 1.2E+3; the "f" format undoes that
  return format(value.normalize(), "f")


def _gsm8k_parse(completion: str, allowed: Collection[str] | None = None) -> str | None:
  del allowed  # free-form answers have no label set
  marker = completion.rfind("####")
  if marker >= 0:
    # the model committed to a final line; an unreadable one is a format failure, not a
    # license to grade a number from its working
    match = _NUMBER.search(completion, marker + 4)
    return normalize_number(match.group()) if match else None
  matches = _NUMBER.findall(completion)
  return normalize_number(matches[-1]) if matches else None


def _gsm8k_gold(record: dict) -> str:
  answer = str(record["answer"])
  final = answer.rsplit("####", 1)[-1].strip()
  if not final:
    raise DataError(f"gsm8k row has an empty final answer after '####': {answer[-80:]!r}.")
  return normalize_number(final)


def _gsm8k_prompt(record: dict) -> str:
  return (f"{str(record['question']).strip()}\n\n"
          "Solve this problem step by step, showing your reasoning. Then give the final answer "
          "as a number alone on the last line, in the form:\n"
          "#### <number>")


# --- Multiple choice -----------------------------------------------------------------------------

# Patterns in priority order: an explicit "answer" statement beats a bare "(X)", which may be
# the model discussing an option it rejects. Within one pattern the last match wins, since
# models often restate their choice at the end.
_ANSWER_STATEMENT = re.compile(
    r"\b(?i:answer)(?:\s+(?i:is)\b)?\s*([:=])?\s*(?:(?i:option|choice)\s+)?[*_]*"
    r"\(?([A-Za-z])\)?(?!\w)"
    r"|\\boxed\{\s*\(?([A-Za-z])\)?\s*\}")
_PARENTHESIZED = re.compile(r"\(([A-Z])\)")
_ONLY_LETTER = re.compile(r"^\W*([A-Za-z])\W*$")


def _letter_parse(completion: str, allowed: Collection[str] | None = None) -> str | None:
  """The chosen letter, or None; `allowed` limits which letters count."""
  allowed_set = {a.strip().upper() for a in allowed} if allowed else set(LETTERS)

  def last_allowed(letters: list[str]) -> str | None:
    for letter in reversed(letters):
      if letter.upper() in allowed_set:
        return letter.upper()
    return None

  statements = []
  for m in _ANSWER_STATEMENT.finditer(completion):
    colon, letter, boxed = m.groups()
    # "the answer is a ..." is the article, so a lowercase letter counts only after
    # "answer:" or inside \boxed{}
    if boxed or colon or letter.isupper():
      statements.append(boxed or letter)
  found = last_allowed(statements) or last_allowed(_PARENTHESIZED.findall(completion))
  if found:
    return found
  only = _ONLY_LETTER.match(completion)
  return last_allowed([only.group(1)]) if only else None


def _mc_prompt(question: str, labels: Sequence[str], texts: Sequence[str]) -> str:
  options = "\n".join(f"{label}. {str(text).strip()}" for label, text in zip(labels, texts))
  letters = ", ".join(labels)
  return (f"Answer the following multiple-choice question.\n\n"
          f"Question: {question.strip()}\n{options}\n\n"
          f"Reason briefly if you need to, then end your reply with a line of the form "
          f"\"Answer: <letter>\", where <letter> is one of {letters}.")


def _choices(raw: Any) -> tuple[list[str], list[str]]:
  """(labels, texts) from a list of strings or of {label, text} dicts."""
  if not isinstance(raw, (list, tuple)) or not raw:
    raise DataError(f"choices must be a non-empty list of strings or of {{label, text}} "
                    f"objects, got {raw!r:.80}.")
  if len(raw) > len(LETTERS):
    raise DataError(f"{len(raw)} choices is more than the {len(LETTERS)} letters A-Z.")
  if all(isinstance(c, dict) for c in raw):
    if not all("text" in c for c in raw):
      raise DataError(f"every choice object needs a 'text' field: {raw!r:.120}.")
    labels = [str(c.get("label", LETTERS[i])).strip().upper() for i, c in enumerate(raw)]
    return labels, [str(c["text"]) for c in raw]
  return list(LETTERS[:len(raw)]), [str(c) for c in raw]


def _csqa_labels(record: dict) -> list[str]:
  return _choices(record["question"]["choices"])[0]


def _csqa_prompt(record: dict) -> str:
  labels, texts = _choices(record["question"]["choices"])
  return _mc_prompt(record["question"]["stem"], labels, texts)


def _csqa_gold(record: dict) -> str:
  key = str(record["answerKey"]).strip().upper()
  if key not in _csqa_labels(record):
    raise DataError(f"commonsenseqa answerKey {key!r} is not one of the choice labels "
                    f"{_csqa_labels(record)} (record id {record.get('id')!r}).")
  return key


def _mc_labels(record: dict) -> list[str]:
  return _choices(record["choices"])[0]


def _mc_render(record: dict) -> str:
  labels, texts = _choices(record["choices"])
  return _mc_prompt(str(record["question"]), labels, texts)


def _mc_gold(record: dict) -> str:
  labels, texts = _choices(record["choices"])
  answer = record["answer"]
  if isinstance(answer, int) and not isinstance(answer, bool):
    if 0 <= answer < len(labels):
      return labels[answer]
  elif isinstance(answer, str):
    key = answer.strip()
    if key.upper() in labels:
      return key.upper()
    if key.isdigit() and int(key) < len(labels):
      return labels[int(key)]
    if key in texts:  # some files store the correct option's text rather than its letter
      return labels[texts.index(key)]
  raise DataError(f"multiple_choice answer {answer!r} is neither a label in {labels} nor an "
                  f"index 0..{len(labels) - 1}. Store the letter or the 0-based index.")


gsm8k = Task(name="gsm8k", fields=("question", "answer"), render=_gsm8k_prompt,
             gold=_gsm8k_gold, parse=_gsm8k_parse)

commonsenseqa = Task(name="commonsenseqa",
                     fields=("question.stem", "question.choices", "answerKey"),
                     render=_csqa_prompt, gold=_csqa_gold, parse=_letter_parse,
                     labels=_csqa_labels)

multiple_choice = Task(name="multiple_choice", fields=("question", "choices", "answer"),
                       render=_mc_render, gold=_mc_gold, parse=_letter_parse, labels=_mc_labels)

TASKS: dict[str, Task] = {t.name: t for t in (gsm8k, commonsenseqa, multiple_choice)}


def get_task(name: str) -> Task:
  """The task called `name` (case and '-' vs '_' do not matter).

  Raises:
    DataError: no task has that name; the message lists the known ones.
  """
  key = str(name).strip().lower().replace("-", "_")
  if key not in TASKS:
    raise DataError(f"Unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}. For your "
                    f"own multiple-choice file use 'multiple_choice' (fields question, choices, "
                    f"answer).")
  return TASKS[key]
