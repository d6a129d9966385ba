"""The tasks beyond GSM8K / CSQA (bigmath, capitals, mmlu_pro, supergpqa), grading on real rows,
the built-in capitals data, and bad rows reported by file and line."""

from __future__ import annotations

import json
import re

import pytest

from kdknob_jax.data import (BUILTIN_ROOT, DataError, Records, data_root, get_task, load_records,
                             normalize_math, normalize_name)

GSM8K_TEST = data_root() / "gsm8k" / "test.jsonl"
CSQA_SAMPLE = data_root() / "commonsenseqa" / "sample200.jsonl"


from tests.test_data import _need  # pylint: disable=g-bad-import-order


def _write_jsonl(path, lines):
  """Writes raw lines (dicts are JSON-encoded, strings written as they are)."""
  path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
  return path


# --- real rows -----------------------------------------------------------------------------------

def test_gsm8k_restated_gold_is_correct_and_a_perturbed_one_wrong_on_many_rows():
  _need(GSM8K_TEST)
  task = get_task("gsm8k")
  rows = load_records("gsm8k/test.jsonl", limit=300)
  task.check_records(rows)
  for row in rows:
    gold = task.reference(row)
    assert task.is_correct(f"Let me work it out.\n#### {gold}", row)
    wrong = f"{float(gold) + 1:g}" if "." in gold else str(int(gold) + 1)
    assert not task.is_correct(f"Let me work it out.\n#### {wrong}", row)


def test_gsm8k_final_answers_grade_as_bigmath_rows():
  """GSM8K's integer answers as Big-Math rows: boxed, stated, fraction and decimal spellings."""
  _need(GSM8K_TEST)
  task = get_task("bigmath")
  gsm = load_records("gsm8k/test.jsonl", limit=200)
  for row in gsm:
    final = row["answer"].rsplit("####", 1)[1].strip()
    rec = {"problem": row["question"], "answer": final}
    value = int(final.replace(",", ""))
    assert task.is_correct(f"So the total is \\boxed{{{value}}}.", rec)
    assert task.is_correct(f"Therefore the answer is ${value}$.", rec)
    assert task.is_correct(f"\\boxed{{\\frac{{{2 * value}}}{{2}}}}", rec)
    assert task.is_correct(f"\\boxed{{{value}.0}}", rec)
    assert not task.is_correct(f"\\boxed{{{value + 1}}}", rec)
    assert not task.is_correct(f"\\boxed{{{value}}} or maybe \\boxed{{{value - 3}}}", rec)
    assert row["question"].strip() in task.prompt(rec) and "\\boxed{" in task.prompt(rec)


def test_commonsenseqa_rows_as_mmlu_pro_and_supergpqa():
  _need(CSQA_SAMPLE)
  rows = load_records("commonsenseqa/sample200.jsonl")
  mmlu, sgpqa = get_task("mmlu_pro"), get_task("supergpqa")
  for row in rows:
    texts = [c["text"] for c in row["question"]["choices"]]
    key = row["answerKey"]
    index = "ABCDE".index(key)
    other = "ABCDE"[(index + 1) % 5]
    as_mmlu = {"question": row["question"]["stem"], "options": texts, "answer": key,
               "answer_index": index}
    as_sgpqa = {"question": row["question"]["stem"], "options": texts,
                "answer": texts[index], "answer_letter": key}
    for task, rec in ((mmlu, as_mmlu), (sgpqa, as_sgpqa)):
      task.check_records([rec])
      assert task.reference(rec) == key
      assert task.is_correct(f"Thinking...\nAnswer: {key}", rec)
      assert not task.is_correct(f"Thinking...\nAnswer: {other}", rec)
      assert f"{key}. {texts[index]}" in task.prompt(rec)


# --- bigmath -------------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b", [
    ("0.5", "1/2"), ("1/2", "\\frac{1}{2}"), ("\\frac12", "\\dfrac{1}{2}"),
    ("\\tfrac{2}{4}", "0.50"), ("-\\frac{1}{2}", "\\frac{-1}{2}"), ("-0.5", "-1/2"),
    ("3", "3.0"), ("1,000", "1000"), ("$5$", "5"), ("5.", "5"), ("x = 7", "7"),
    ("5\\text{ cm}", "5"), ("30^\\circ", "30"), ("\\left(1, 2\\right)", "(1,2)"),
    ("\\sqrt2", "\\sqrt{2}"), ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt{3}}{2}"),
    ("\\text{Monday}", "Monday"), ("{4}", "4"), ("2/6", "\\frac{1}{3}"),
])
def test_normalize_math_equivalences(a, b):
  assert normalize_math(a) == normalize_math(b)


@pytest.mark.parametrize("a,b", [
    ("1/2", "1/3"), ("0.5", "5"), ("\\sqrt{2}", "\\sqrt{3}"), ("(1,2)", "12"),
    ("-\\frac{1}{2}", "\\frac{1}{2}"), ("\\pi", "3.14"),
])
def test_normalize_math_differences(a, b):
  assert normalize_math(a) != normalize_math(b)


@pytest.mark.parametrize("completion,expected", [
    ("We get \\boxed{\\frac{1}{2}}.", "0.5"),
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),  # nested braces
    ("\\boxed{ {-2.5} }", "-2.5"),
    ("So the answer is $\\dfrac{3}{4}$.", "0.75"),
    ("Answer: 12", "12"),
    ("The answer is 12 apples.", "12"),
    ("3 + 4 = 7, and 7 * 2 = 14", "14"),
    ("so x = -3", "-3"),
    ("16-3-4=9", "9"),
    ("no numbers here", None),
    ("", None),
])
def test_bigmath_extract(completion, expected):
  assert get_task("bigmath").extract(completion) == expected


def test_bigmath_grading():
  task = get_task("bigmath")
  half = {"problem": "Halve one.", "answer": "\\frac{1}{2}"}
  assert task.reference(half) == "0.5"
  for good in ("\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{\\dfrac{1}{2}}", "answer is 2/4"):
    assert task.is_correct(good, half), good
  assert not task.is_correct("\\boxed{2}", half)
  root = {"problem": "p", "answer": "\\sqrt{2}"}
  assert task.is_correct("\\boxed{\\sqrt2}", root) and not task.is_correct("\\boxed{2}", root)
  assert task.reference({"problem": "p", "answer": "$\\boxed{7}$"}) == "7"
  assert task.reference({"problem": "p", "answer": -2.5}) == "-2.5"


# --- capitals ------------------------------------------------------------------------------------

CAPITAL = {"question": "What is the capital of the United States?", "answer": "Washington, D.C.",
           "aliases": ["Washington", "Washington DC"]}


@pytest.mark.parametrize("completion,ok", [
    ("Washington, D.C.", True),
    ("washington dc", True),
    ("Washington", True),
    ("The capital is Washington D.C.\nIt is on the Potomac.", True),
    ("Hmm, let me think.\nAnswer: **Washington**", True),
    ("New York", False),
    ("Washingtonia", False),  # whole words only
    ("New York\nWashington", False),  # only the first line counts without "Answer:"
    ("", False),
])
def test_capitals_aliases(completion, ok):
  assert get_task("capitals").is_correct(completion, CAPITAL) == ok


def test_capitals_accents_and_punctuation():
  task = get_task("capitals")
  bogota = {"question": "q", "answer": "Bogotá"}
  assert task.is_correct("Bogota", bogota) and task.is_correct("BOGOTÁ.", bogota)
  assert task.is_correct("Answer: Bogotá, Colombia", bogota)
  chad = {"question": "q", "answer": "N'Djamena"}
  assert task.is_correct("NDjamena", chad) and task.is_correct("N’Djamena", chad)
  assert normalize_name("Port-au-Prince") == "port au prince"
  assert normalize_name("  Chișinău ") == "chisinau"
  assert task.reference(bogota) == "bogota"
  assert task.extract("Paris!\nmore text") == "paris"
  assert task.extract("The capital of Chile is Santiago.") == "santiago"
  assert task.extract("Santiago is the capital of Chile.") == "santiago"
  assert task.extract("The capital city of Chile is the city of Santiago") == "santiago"
  assert task.extract("   \n\n") is None
  assert "What is the capital" not in task.prompt(bogota) and "city name" in task.prompt(bogota)


def test_builtin_capitals_load_and_grade_themselves():
  task = get_task("capitals")
  test = load_records("builtin:capitals/test.jsonl")
  train = load_records("builtin:capitals", split="train")
  assert (len(train), len(test)) == (109, 50)
  assert not {r["country"] for r in train} & {r["country"] for r in test}
  for rows in (train, test):
    task.check_records(rows)
    for row in rows:
      assert task.is_correct(row["answer"], row), row
      assert task.is_correct(f"The capital is {row['answer']}.", row), row
      for alias in row["aliases"]:
        assert task.is_correct(f"Answer: {alias}", row), (alias, row)
      assert row["country"] in row["question"]
  assert task.default_source == "builtin:capitals/test.jsonl"


def test_builtin_files_are_found_last(tmp_path, monkeypatch):
  monkeypatch.setenv("KDKNOB_DATA", str(tmp_path / "data"))
  monkeypatch.chdir(tmp_path)
  builtin = load_records("capitals/test.jsonl")
  assert builtin.path == BUILTIN_ROOT / "capitals" / "test.jsonl"
  (tmp_path / "capitals").mkdir()
  _write_jsonl(tmp_path / "capitals" / "test.jsonl", [{"question": "q", "answer": "Oslo"}])
  assert load_records("capitals/test.jsonl") == [{"question": "q", "answer": "Oslo"}]
  assert load_records("builtin:capitals/test.jsonl") == builtin  # the prefix skips mine
  with pytest.raises(DataError, match=r"No built-in dataset.*capitals/test\.jsonl"):
    load_records("builtin:capitals/dev.jsonl")


# --- multiple choice variants --------------------------------------------------------------------

def test_mmlu_pro_letters_indices_and_ten_options():
  task = get_task("mmlu-pro")
  options = [f"choice {i}" for i in range(10)]
  by_letter = {"question": "Which?", "options": options, "answer": "J"}
  by_index = {"question": "Which?", "options": options, "answer_index": 3}
  both = {"question": "Which?", "options": options, "answer": "d", "answer_index": 3}
  assert [task.reference(r) for r in (by_letter, by_index, both)] == ["J", "D", "D"]
  assert "J. choice 9" in task.prompt(by_letter) and "A, B, C" in task.prompt(by_letter)
  assert task.is_correct("The answer is (J).", by_letter)
  assert not task.is_correct("Answer: K", by_letter)  # not an option letter of this row
  with pytest.raises(DataError, match="disagree"):
    task.reference(dict(both, answer="E"))
  with pytest.raises(DataError, match="answer_index 10"):
    task.reference(dict(by_index, answer_index=10))


def test_supergpqa_letter_or_option_text():
  task = get_task("supergpqa")
  row = {"question": "Q?", "options": ["red", "green", "blue"], "answer_letter": "C"}
  text = {"question": "Q?", "options": ["red", "green", "blue"], "answer": "green"}
  assert task.reference(row) == "C" and task.reference(text) == "B"
  assert task.is_correct("Answer: C", row) and not task.is_correct("Answer: B", row)
  assert task.reference(dict(row, answer="blue")) == "C"
  with pytest.raises(DataError, match="is option 'blue', but answer is 'red'"):
    task.reference(dict(row, answer="red"))
  twice = {"question": "Q?", "options": ["red", "red", "blue"], "answer": "red"}
  with pytest.raises(DataError, match=r"options \['A', 'B'\]; give 'answer_letter'"):
    task.reference(twice)
  assert task.reference(dict(twice, answer_letter="B")) == "B"
  with pytest.raises(DataError, match="neither one of the options"):
    task.reference(dict(text, answer="purple"))


# --- bad data: file and line ---------------------------------------------------------------------

@pytest.mark.parametrize("task,good,bad,message", [
    ("gsm8k", {"question": "q", "answer": "#### 3"}, {"question": "q"}, "no field 'answer'"),
    ("gsm8k", {"question": "q", "answer": "#### 3"}, {"question": "q", "answer": "work ####"},
     "empty final answer"),
    ("bigmath", {"problem": "p", "answer": "3"}, {"problem": "p", "answer": ""}, "is empty"),
    ("bigmath", {"problem": "p", "answer": "3"}, {"problem": "p", "answer": None},
     "no field 'answer'"),
    ("capitals", {"question": "q", "answer": "Oslo"}, {"question": "q", "answer": "  "},
     "is empty"),
    ("capitals", {"question": "q", "answer": "Oslo"},
     {"question": "q", "answer": "Oslo", "aliases": "Christiania"}, "must be a list"),
    ("mmlu_pro", {"question": "q", "options": ["a", "b"], "answer": "A"},
     {"question": "q", "options": ["a", "b"], "answer": "C"}, "not one of the option letters"),
    ("mmlu_pro", {"question": "q", "options": ["a", "b"], "answer": "A"},
     {"question": "q", "options": ["a", "b"]}, "has no answer"),
    ("supergpqa", {"question": "q", "options": ["a", "b"], "answer_letter": "B"},
     {"question": "q", "options": ["a", "b"], "answer_letter": "Z"},
     "not one of the option letters"),
    ("supergpqa", {"question": "q", "options": ["a", "b"], "answer_letter": "B"},
     {"question": "q", "answer_letter": "B"}, "no field 'options'"),
    ("commonsenseqa",
     {"answerKey": "A", "question": {"stem": "s", "choices": [{"label": "A", "text": "x"}]}},
     {"answerKey": "F", "question": {"stem": "s", "choices": [{"label": "A", "text": "x"}]}},
     "answerKey 'F'"),
])
def test_bad_row_error_names_file_and_line(tmp_path, task, good, bad, message):
  # blank and spacer lines make the bad row's line (5) differ from its row number (2)
  path = _write_jsonl(tmp_path / "rows.jsonl", [good, "", good, "  ", bad, good])
  rows = load_records(str(path))
  with pytest.raises(DataError, match=re.escape(f"{path}:5") + ".*" + re.escape(message)):
    get_task(task).check_records(rows)
  # an offset keeps the file's own line numbers
  rows = load_records(str(path), offset=1)
  with pytest.raises(DataError, match=re.escape(f"{path}:5")):
    get_task(task).check_records(rows, start=1)
  get_task(task).check_records(load_records(str(path), limit=2))  # the good rows pass


def test_records_keep_their_origin(tmp_path):
  path = _write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, "", {"a": 2}, {"a": 3}])
  rows = load_records(str(path), offset=1)
  assert isinstance(rows, Records) and rows == [{"a": 2}, {"a": 3}]
  assert rows.lines == [3, 4] and rows.positions == [1, 2] and rows.path == path
  assert rows[1:].where(0) == f"{path}:4" and rows[0] == {"a": 2}
  (tmp_path / "r.json").write_text(json.dumps([{"a": 1}, {"b": 2}]))
  as_json = load_records(str(tmp_path / "r.json"))
  assert as_json.lines is None
  where = f"{tmp_path / 'r.json'} row 1"  # a .json list has positions, not lines
  with pytest.raises(DataError, match=re.escape(f"{where} has no field 'question'")):
    get_task("gsm8k").check_records(as_json[1:])
  # plain lists (rows built in code) still report "row N" counted from `start`
  with pytest.raises(DataError, match=r"'gsm8k': row 4 has no field"):
    get_task("gsm8k").check_records([{"question": "q", "answer": "#### 1"}, {"question": "q"}],
                                    start=3)
