"""Reading free-form answers out of completions: numbers, short LaTeX math, and short names.

Each normalizer is applied to both the model's answer and the gold one, so grading stays a
comparison of canonical strings (or, for names, of canonical phrases):

  normalize_number("$1,200.00")          -> "1200"
  normalize_math("\\dfrac{1}{2}")        -> "0.5"     (as do "0.5" and "1/2")
  normalize_name("Bogotá, D.C.")         -> "bogota dc"

No jax here; tasks.py wires these into `Task`s.
"""

from __future__ import annotations

import decimal
import fractions
import re
import unicodedata

# --- numbers -------------------------------------------------------------------------------------

# A sign counts only when it does not follow a word or digit, so "16-3-4" is three positives.
# Thousands groups must be exact ("1,234"), so a list "1, 2,3" never fuses into one number.
NUMBER = re.compile(r"(?:(?<![\w)])[-\u2212])?\$?\s?"
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


# --- LaTeX math answers (MATH / Big-Math style) --------------------------------------------------

# A whole answer that is a plain number; commas only as exact thousands groups, so a tuple
# such as "1,2" is never read as twelve.
_PLAIN_NUMBER = re.compile(r"-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_SIMPLE_FRACTION = re.compile(rf"(-?)({_PLAIN_NUMBER.pattern})/({_PLAIN_NUMBER.pattern})")
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
# The last number in running text, optionally a fraction "3/4", sign rule as in NUMBER.
_LAST_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")
_ANSWER_LINE = re.compile(r"(?i:\banswer\s+is\b|\banswer\s*:)\s*(.*)")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_UNIT = re.compile(_TEXT_WRAPPER.pattern + r"(?:\^\{?\d\}?)?")  # "\text{ cm}^2"
# "The answer is 12 apples.": a number that leads a stated answer written in words
_LEADING_NUMBER = re.compile(r"\$?(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?)\$?\s+[A-Za-z]")


def last_boxed(text: str) -> str | None:
  r"""The contents of the last \boxed{...} (or \fbox{...}) with balanced braces, or None."""
  best = None
  for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
    depth, i = 1, m.end()
    while i < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      i += 1
    if depth == 0:  # an unclosed box (a truncated completion) holds no answer
      best = text[m.end():i - 1]
  return best


def _as_rational(text: str) -> fractions.Fraction | None:
  """The exact value of a plain number, a/b or \\frac{a}{b}; None for anything else."""
  if _PLAIN_NUMBER.fullmatch(text):
    return fractions.Fraction(normalize_number(text))
  for pattern in (_SIMPLE_FRACTION, _LATEX_FRACTION):
    m = pattern.fullmatch(text)
    if m:
      sign, top, bottom = m.groups()
      top, bottom = _as_rational(top), _as_rational(bottom)
      if top is None or bottom is None or bottom == 0:
        return None
      value = top / bottom
      return -value if sign else value
  return None


def normalize_math(text: str) -> str:
  r"""A canonical spelling of a short math answer.

  Decorations go ($, spaces, \left / \right, spacing commands, a trailing period, degree and
  percent signs, a "\text{...}" unit after a value, a leading "x ="). \dfrac and \tfrac become
  \frac, and "\frac12" becomes "\frac{1}{2}". A value that is an exact rational (a number, a/b
  or \frac{a}{b}) is written as a decimal when it has a finite one, else as "p/q" in lowest
  terms, so "0.5", "1/2" and "\frac{1}{2}" all read "0.5", and "\frac{2}{6}" reads "1/3".
  Anything else is compared as the remaining LaTeX string.
  """
  s = str(text).strip().replace("\u2212", "-")
  s = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\\[,;:!]|\\ |\$", "", s)
  s = re.sub(r"\\[dt]frac", r"\\frac", s)
  s = re.sub(r"\^\{?\\circ\}?|\\%|%", "", s)
  whole = _TEXT_WRAPPER.fullmatch(s.strip())
  if whole:  # an answer that is all text ("\text{Monday}") keeps its words
    s = whole.group(1)
  else:  # a unit after a value ("5\text{ cm}") is not part of the answer
    s = _UNIT.sub("", s)
  s = re.sub(r"\s+", "", s).rstrip(".")
  s = re.sub(r"^[a-zA-Z]=(?=.)", "", s)
  # \frac12 and \sqrt2: single-character arguments without braces
  s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac\{([^{}]+)\}(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
  while len(s) > 2 and s[0] == "{" and s[-1] == "}" and _balanced(s[1:-1]):
    s = s[1:-1]
  value = _as_rational(s)
  return s if value is None else _spell_rational(value)


def _spell_rational(value: fractions.Fraction) -> str:
  """A decimal ("0.5") when the value has a finite one, else "p/q" ("1/3")."""
  den = value.denominator
  for prime in (2, 5):
    while den % prime == 0:
      den //= prime
  if den != 1:
    return f"{value.numerator}/{value.denominator}"
  return normalize_number(str(decimal.Decimal(value.numerator) / value.denominator))


def _balanced(text: str) -> bool:
  depth = 0
  for ch in text:
    depth += {"{": 1, "}": -1}.get(ch, 0)
    if depth < 0:
      return False
  return depth == 0


def parse_math(completion: str) -> str | None:
  r"""The final answer of a math completion, normalized; None when it gives none.

  In priority order: the last \boxed{...}; else the rest of the line after the last "answer
  is" / "Answer:"; else the last number in the text.
  """
  boxed = last_boxed(completion)
  if boxed is not None:
    return normalize_math(boxed) or None
  statements = list(_ANSWER_LINE.finditer(completion))
  if statements:
    stated = statements[-1].group(1).strip()
    if stated:
      leading = _LEADING_NUMBER.match(stated)
      if leading and _as_rational(normalize_math(stated)) is None:
        return normalize_math(leading.group(1))
      return normalize_math(stated) or None
  numbers = _LAST_NUMBER.findall(completion)
  return normalize_math(numbers[-1]) if numbers else None


# --- short names (capitals) ----------------------------------------------------------------------

_FINAL_ANSWER = re.compile(r"(?i:\banswer\s*:)")


def normalize_name(text: str) -> str:
  """Lowercase, accents folded ("Bogotá" -> "bogota"), punctuation dropped, one space between
  words. Hyphens and slashes separate words ("Port-au-Prince" -> "port au prince"); other
  punctuation joins them ("N'Djamena" -> "ndjamena", "D.C." -> "dc")."""
  folded = unicodedata.normalize("NFKD", str(text))
  folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).lower()
  folded = re.sub(r"[-\u2010-\u2015/]", " ", folded)
  folded = "".join(ch for ch in folded if ch.isalnum() or ch.isspace())
  return " ".join(folded.split())


def parse_short_answer(completion: str) -> str | None:
  """A short answer, normalized by `normalize_name`: the text after the last "Answer:" up to
  the end of its line when there is one, else the first non-empty line; None when empty."""
  markers = list(_FINAL_ANSWER.finditer(completion))
  if markers:
    tail = completion[markers[-1].end():].strip()
    candidate = tail.splitlines()[0] if tail else ""
  else:
    lines = [line for line in completion.splitlines() if line.strip()]
    candidate = lines[0] if lines else ""
  return normalize_name(candidate) or None


def contains_phrase(text: str, phrase: str) -> bool:
  """Whether `phrase` occurs in `text` as whole words (both already `normalize_name`d)."""
  return bool(phrase) and f" {phrase} " in f" {text} "
