"""Evaluation tasks: the prompt for a row, its gold answer, and the grading of a completion.

A Task turns a record (a dict from `load_records`) into the user message for a chat model, and
grades that model's completion against the record. Answers on both sides go through the same
normalization, so grading is an exact match of normalized strings (or a task's own `match`,
e.g. a capital named inside a longer reply); a completion with no recognizable final answer is
simply wrong.

Tasks: gsm8k, bigmath (free-form math), capitals (short names), and the multiple-choice
family: commonsenseqa, mmlu_pro, supergpqa and multiple_choice (any file of question, choices,
answer). The answer readers live in answers.py.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Collection, Sequence
from typing import Any

from kdknob_jax.data.answers import (NUMBER, contains_phrase, last_boxed, normalize_math,
                                     normalize_name, normalize_number, parse_math,
                                     parse_short_answer)
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
    match: (normalized answer, record) -> whether it is correct; None means "equals
      gold(record)". For tasks whose answers are not one canonical string (aliases).
    default_source: the data `load_records` reads when none is given, or None.
  """
  name: str
  fields: tuple[str, ...]
  render: Callable[[dict], str] = dataclasses.field(repr=False)
  gold: Callable[[dict], str] = dataclasses.field(repr=False)
  parse: Callable[[str, Collection[str] | None], str | None] = dataclasses.field(repr=False)
  labels: Callable[[dict], Sequence[str] | None] = dataclasses.field(
      default=lambda record: None, repr=False)
  match: Callable[[str, dict], bool] | None = dataclasses.field(default=None, repr=False)
  default_source: str | None = None

  def check(self, record: Any, index: int | None = None, where: str | None = None) -> None:
    """Raises DataError when `record` lacks a field this task needs (or holds null there).

    Args:
      record: one row.
      index: its row number in the loaded data, for the message.
      where: its location, e.g. "data.jsonl:12"; overrides `index` in the message.
    """
    where = where or ("row" if index is None else f"row {index}")
    if not isinstance(record, dict):
      raise DataError(f"Task {self.name!r}: {where} is {type(record).__name__}, not a dict.")
    for path in self.fields:
      value = _get(record, path)
      if value is _MISSING or value is None:
        raise DataError(f"Task {self.name!r}: {where} has no field {path!r} (its fields: "
                        f"{sorted(record)}). This task needs {list(self.fields)}; pick the task "
                        f"that matches the file (known: {sorted(TASKS)}) or fix the row.")

  def check_records(self, records: Sequence[dict], start: int = 0) -> None:
    """Checks every record up front, so a bad row fails before any model runs.

    Args:
      records: rows from `load_records`. When they carry their origin (`Records`), messages
        name the file and line ("data.jsonl:12"); otherwise the row number.
      start: the row number of records[0] (the `offset` they were loaded with); used only for
        rows that do not carry their origin.
    """
    locate = getattr(records, "where", None)
    for i, record in enumerate(records):
      where = locate(i) if locate else f"row {start + i}"
      self.check(record, where=where)
      try:
        self.gold(record)  # also rejects a gold answer that cannot be graded
      except DataError as e:
        raise DataError(f"Task {self.name!r}: {where}: {e}") from e

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

  def grade(self, answer: str | None, record: dict) -> bool:
    """Whether an already extracted answer is correct (None, no answer, is wrong)."""
    if answer is None:
      return False
    if self.match is not None:
      self.check(record)
      return bool(self.match(answer, record))
    return answer == self.reference(record)

  def is_correct(self, completion: str, record: dict) -> bool:
    """Whether the completion's final answer is correct (no answer: False)."""
    return self.grade(self.extract(completion, self.labels(record)), record)


# --- GSM8K: free-form numbers ------------------------------------------------------------------

def _gsm8k_parse(completion: str, allowed: Collection[str] | None = None) -> str | None:
  del allowed  # free-form answers have no label set
  marker = completion.rfind("####")
  if marker >= 0:
    # the model committed to a final line; an unreadable one is a format failure, not a
    # license to grade a number from its working
    match = NUMBER.search(completion, marker + 4)
    return normalize_number(match.group()) if match else None
  matches = NUMBER.findall(completion)
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


def _options_labels(record: dict) -> list[str]:
  return _choices(record["options"])[0]


def _options_render(record: dict) -> str:
  labels, texts = _choices(record["options"])
  return _mc_prompt(str(record["question"]), labels, texts)


def _given(record: dict, key: str) -> bool:
  value = record.get(key)
  return value is not None and str(value).strip() != ""


def _mmlu_pro_gold(record: dict) -> str:
  labels = _options_labels(record)
  if not _given(record, "answer") and not _given(record, "answer_index"):
    raise DataError("mmlu_pro row has no answer: give 'answer' (the option letter) and/or "
                    "'answer_index' (its 0-based position).")
  letter = from_index = None
  if _given(record, "answer"):
    letter = str(record["answer"]).strip().upper()
    if letter not in labels:
      raise DataError(f"mmlu_pro answer {record['answer']!r} is not one of the option letters "
                      f"{labels}.")
  if _given(record, "answer_index"):
    index = record["answer_index"]
    if isinstance(index, bool) or not str(index).strip().isdigit() or int(index) >= len(labels):
      raise DataError(f"mmlu_pro answer_index {index!r} is not an option position 0.."
                      f"{len(labels) - 1}.")
    from_index = labels[int(index)]
  if letter and from_index and letter != from_index:
    raise DataError(f"mmlu_pro answer {letter!r} and answer_index {record['answer_index']} "
                    f"(option {from_index}) disagree; fix one of them.")
  return letter or from_index


def _supergpqa_gold(record: dict) -> str:
  labels, texts = _choices(record["options"])
  stripped = [t.strip() for t in texts]
  answer = str(record["answer"]).strip() if _given(record, "answer") else None
  if answer is not None and answer not in stripped and answer.upper() not in labels:
    raise DataError(f"supergpqa answer {answer!r:.80} is neither one of the options' texts "
                    f"nor a letter in {labels}.")
  if _given(record, "answer_letter"):
    letter = str(record["answer_letter"]).strip().upper()
    if letter not in labels:
      raise DataError(f"supergpqa answer_letter {record['answer_letter']!r} is not one of the "
                      f"option letters {labels}.")
    option = stripped[labels.index(letter)]
    if answer is not None and answer != option and answer.upper() != letter:
      raise DataError(f"supergpqa answer_letter {letter!r} is option {option!r:.60}, but "
                      f"answer is {answer!r:.60}; fix one of them.")
    return letter
  if answer is None:
    raise DataError("supergpqa row has no answer: give 'answer_letter' (the option letter) "
                    "or 'answer' (the correct option's text).")
  if answer in stripped:
    matches = [label for label, t in zip(labels, stripped) if t == answer]
    if len(matches) > 1:
      raise DataError(f"supergpqa answer {answer!r:.60} is the text of options {matches}; give "
                      f"'answer_letter' to say which.")
    return matches[0]
  return answer.upper()  # some exports store the letter under "answer"


# --- Big-Math / MATH: short LaTeX answers --------------------------------------------------------

def _bigmath_prompt(record: dict) -> str:
  return (f"{str(record['problem']).strip()}\n\n"
          "Solve this problem step by step, showing your reasoning. Then write the final "
          "answer inside \\boxed{}, e.g. \\boxed{42}.")


def _bigmath_gold(record: dict) -> str:
  raw = str(record["answer"]).strip()
  boxed = last_boxed(raw)  # some files keep the solution's \boxed{} around the answer
  gold = normalize_math(boxed if boxed is not None else raw)
  if not gold:
    raise DataError(f"bigmath answer {record['answer']!r} is empty; every row needs a final "
                    f"answer.")
  return gold


def _bigmath_parse(completion: str, allowed: Collection[str] | None = None) -> str | None:
  del allowed  # free-form answers have no label set
  return parse_math(completion)


# --- Capitals: short names with aliases ----------------------------------------------------------

def _capitals_prompt(record: dict) -> str:
  # Tiny chat models follow one short instruction better than a paragraph of format rules.
  return f"{str(record['question']).strip()}\nAnswer with just the city name."


def _capitals_names(record: dict) -> list[str]:
  """The normalized gold answer, then its normalized aliases."""
  aliases = record.get("aliases") or []
  if isinstance(aliases, str) or not isinstance(aliases, (list, tuple)):
    raise DataError(f"capitals 'aliases' must be a list of strings, got {aliases!r:.80}.")
  names = []
  for name in (record["answer"], *aliases):
    norm = normalize_name(name) if isinstance(name, str) else ""
    if not norm:
      raise DataError(f"capitals answer or alias {name!r} is empty (or not a string); every "
                      f"accepted name needs letters.")
    names.append(norm)
  return names


def _capitals_gold(record: dict) -> str:
  return _capitals_names(record)[0]


def _capitals_match(answer: str, record: dict) -> bool:
  return any(contains_phrase(answer, name) for name in _capitals_names(record))


# Small chat models answer in a sentence; keeping only the named city lets a majority vote
# count "The capital of Chile is Santiago." and "Santiago" as one answer. Applied to
# normalized text (lowercase, no punctuation).
_CAPITAL_SENTENCE = re.compile(r"^(?:the )?capital (?:city )?of .+? is (?:the city of )?(.+)$"
                               r"|^(.+?) is the capital(?: city)?(?: of .+)?$")


def _capitals_parse(completion: str, allowed: Collection[str] | None = None) -> str | None:
  del allowed
  answer = parse_short_answer(completion)
  sentence = _CAPITAL_SENTENCE.match(answer or "")
  return (sentence.group(1) or sentence.group(2)) if sentence else answer


gsm8k = Task(name="gsm8k", fields=("question", "answer"), render=_gsm8k_prompt,
             gold=_gsm8k_gold, parse=_gsm8k_parse, default_source="gsm8k/test.jsonl")

bigmath = Task(name="bigmath", fields=("problem", "answer"), render=_bigmath_prompt,
               gold=_bigmath_gold, parse=_bigmath_parse)

capitals = Task(name="capitals", fields=("question", "answer"), render=_capitals_prompt,
                gold=_capitals_gold, parse=_capitals_parse, match=_capitals_match,
                default_source="builtin:capitals/test.jsonl")

commonsenseqa = Task(name="commonsenseqa",
                     fields=("question.stem", "question.choices", "answerKey"),
                     render=_csqa_prompt, gold=_csqa_gold, parse=_letter_parse,
                     labels=_csqa_labels, default_source="commonsenseqa/sample200.jsonl")

mmlu_pro = Task(name="mmlu_pro", fields=("question", "options"), render=_options_render,
                gold=_mmlu_pro_gold, parse=_letter_parse, labels=_options_labels)

supergpqa = Task(name="supergpqa", fields=("question", "options"), render=_options_render,
                 gold=_supergpqa_gold, parse=_letter_parse, labels=_options_labels)

multiple_choice = Task(name="multiple_choice", fields=("question", "choices", "answer"),
                       render=_mc_render, gold=_mc_gold, parse=_letter_parse, labels=_mc_labels)

TASKS: dict[str, Task] = {t.name: t for t in (gsm8k, bigmath, capitals, commonsenseqa, mmlu_pro,
                                              supergpqa, multiple_choice)}


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
