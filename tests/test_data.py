"""kdknob_jax.data: loading rows from files, and grading answers on real GSM8K / CSQA rows."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest

from kdknob_jax.data import (TASKS, DataError, data_root, get_task, load_records,
                             normalize_number)

GSM8K_TEST = data_root() / "gsm8k" / "test.jsonl"
CSQA_SAMPLE = data_root() / "commonsenseqa" / "sample200.jsonl"


def _need(path):
  if not path.is_file():
    pytest.skip(f"{path} is absent (the shared data folder is not on this machine; set "
                f"$KDKNOB_DATA to where it is to run this test)")


# --- real rows -----------------------------------------------------------------------------------

def test_gsm8k_reference_text_grades_itself_correct_and_a_perturbed_one_wrong():
  _need(GSM8K_TEST)
  task = get_task("gsm8k")
  rows = load_records("gsm8k/test.jsonl", limit=20)
  assert len(rows) == 20
  task.check_records(rows)
  for row in rows:
    gold = task.reference(row)
    assert re.fullmatch(r"-?\d+(\.\d+)?", gold), gold
    assert task.is_correct(row["answer"], row), row["answer"]
    head, _, final = row["answer"].rpartition("####")
    wrong = f"{head}#### {int(final.replace(',', '')) + 1}"
    assert not task.is_correct(wrong, row)
    # without a #### line the last number of the reasoning is graded
    assert task.extract(head + f"So the answer is {final.strip()}.") == gold


def test_gsm8k_first_row_prompt_and_known_answers():
  _need(GSM8K_TEST)
  task = get_task("gsm8k")
  rows = load_records(str(GSM8K_TEST), limit=3)
  assert [task.reference(r) for r in rows] == ["18", "3", "70000"]
  prompt = task.prompt(rows[0])
  assert rows[0]["question"] in prompt and "#### <number>" in prompt


def test_commonsenseqa_letters_on_real_rows():
  _need(CSQA_SAMPLE)
  task = get_task("commonsenseqa")
  rows = load_records("commonsenseqa/sample200.jsonl")
  assert len(rows) == 200
  task.check_records(rows)
  for row in rows[:50]:
    key = row["answerKey"]
    labels = [c["label"] for c in row["question"]["choices"]]
    other = next(label for label in labels if label != key)
    assert task.reference(row) == key
    assert task.is_correct(f"Let me think about it.\nAnswer: {key}", row)
    assert not task.is_correct(f"Let me think about it.\nAnswer: {other}", row)
    prompt = task.prompt(row)
    assert row["question"]["stem"] in prompt
    assert all(f"{c['label']}. {c['text']}" in prompt for c in row["question"]["choices"])


def test_directory_source_picks_the_split_file():
  _need(CSQA_SAMPLE)
  rows = load_records("commonsenseqa", split="sample200", offset=5, limit=2)
  direct = load_records(str(CSQA_SAMPLE))
  assert rows == direct[5:7]


# --- hand-written answers ------------------------------------------------------------------------

GSM8K_ROW = {"question": "q", "answer": "work\n#### 1,234"}


@pytest.mark.parametrize("completion,expected", [
    ("#### 1,234", "1234"),
    ("so 5 + 6 = 11\n#### 1234", "1234"),
    ("$3.50", "3.5"),
    ("-7", "-7"),
    ("The answer is 12.", "12"),
    ("16-3-4=9 eggs", "9"),  # subtraction signs are not negatives
    ("It is -1,000.50 in total.", "-1000.5"),
    ("#### $1,200.00 dollars", "1200"),
    ("#### 7\nI changed my mind.\n#### 8", "8"),
    ("no number here", None),
    ("#### eighteen", None),  # a final line with no number is a format failure
    ("", None),
])
def test_gsm8k_extract(completion, expected):
  assert get_task("gsm8k").extract(completion) == expected


def test_gsm8k_grading_edge_cases():
  task = get_task("gsm8k")
  assert task.reference(GSM8K_ROW) == "1234"
  assert task.is_correct("#### 1234", GSM8K_ROW)
  assert task.is_correct("The total is $1,234.00.", GSM8K_ROW)
  assert not task.is_correct("#### 1235", GSM8K_ROW)
  assert not task.is_correct("I cannot tell.", GSM8K_ROW)
  money = {"question": "q", "answer": "#### 3.50"}
  assert task.is_correct("It costs $3.5", money)
  assert not task.is_correct("It costs $3.05", money)


def test_normalize_number():
  assert normalize_number("1,234") == "1234"
  assert normalize_number("3.50") == normalize_number("3.5") == "3.5"
  assert normalize_number("1200") == "1200"  # not 1.2E+3
  assert normalize_number("-0.0") == "0"
  assert normalize_number(" $ 12 ") == "12"
  assert normalize_number("12.") == "12"


CSQA_ROW = {"answerKey": "B", "question": {
    "stem": "Where?", "choices": [{"label": x, "text": f"option {x}"} for x in "ABCDE"]}}


@pytest.mark.parametrize("completion,expected", [
    ("The answer is (B).", "B"),
    ("answer is C", "C"),
    ("Answer: **D**", "D"),
    ("Answer: e", "E"),  # lowercase is fine after "Answer:"
    ("(A) is tempting, but the answer is B.", "B"),  # a stated answer beats a bare (X)
    ("Answer: A\nOn reflection, Answer: C", "C"),  # the last statement wins
    ("I would pick (D).", "D"),
    ("B", "B"),
    (" (c) ", "C"),
    ("\\boxed{A}", "A"),
    ("Answer: Z", None),  # not one of the row's labels
    ("the answer is a mystery", None),  # an article, not a letter
    ("I do not know.", None),
])
def test_letter_extract(completion, expected):
  task = get_task("commonsenseqa")
  assert task.extract(completion, task.labels(CSQA_ROW)) == expected
  assert task.is_correct(completion, CSQA_ROW) == (expected == "B")


def test_multiple_choice_generic_rows():
  task = get_task("multiple-choice")
  letters = {"question": "Pick", "choices": [f"c{i}" for i in range(10)], "answer": "J"}
  index = {"question": "Pick", "choices": ["x", "y", "z"], "answer": 1}
  labelled = {"question": "Pick", "choices": [{"label": "a", "text": "x"},
                                              {"label": "b", "text": "y"}], "answer": "b"}
  assert task.reference(letters) == "J" and "J. c9" in task.prompt(letters)
  assert task.is_correct("Answer: J", letters) and not task.is_correct("Answer: I", letters)
  assert task.reference(index) == "B" and task.is_correct("(B)", index)
  assert not task.is_correct("Answer: D", index)  # D is not a choice of a 3-way row
  assert task.reference(labelled) == "B" and task.is_correct("answer: b", labelled)
  with pytest.raises(DataError, match="neither a label"):
    task.reference({"question": "Pick", "choices": ["x", "y"], "answer": 5})


def test_missing_field_names_field_row_and_task():
  with pytest.raises(DataError, match=r"'commonsenseqa'.*row 7.*'question.stem'"):
    get_task("commonsenseqa").check_records(
        [CSQA_ROW, {"answerKey": "A", "question": {"choices": []}}], start=6)
  with pytest.raises(DataError, match=r"'gsm8k'.*'answer'"):
    get_task("gsm8k").prompt({"question": "q"})
  bad_key = {"answerKey": "Q", "question": CSQA_ROW["question"]}
  with pytest.raises(DataError, match=r"'commonsenseqa': row 2: .*answerKey 'Q'"):
    get_task("commonsenseqa").check_records([CSQA_ROW, bad_key], start=1)


def test_unknown_task_lists_known_ones():
  with pytest.raises(DataError, match="Unknown task 'mmlu'") as info:
    get_task("mmlu")
  assert all(name in str(info.value) for name in TASKS)
  assert isinstance(info.value, ValueError)


# --- loading files -------------------------------------------------------------------------------

ROWS = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]


def test_jsonl_skips_blank_lines_and_offset_limit(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in ROWS[:3]) + "\n\n  \n" +
                  "\n".join(json.dumps(r) for r in ROWS[3:]) + "\n")
  assert load_records(str(path)) == ROWS
  assert load_records(str(path), offset=1, limit=2) == ROWS[1:3]
  assert load_records(str(path), offset=3) == ROWS[3:]
  assert load_records(str(path), limit=100) == ROWS
  with pytest.raises(DataError, match="no rows selected.*5 rows"):
    load_records(str(path), offset=5)


def test_json_and_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  (tmp_path / "d.json").write_text(json.dumps(ROWS))
  assert load_records(str(tmp_path / "d.json"), limit=2) == ROWS[:2]
  pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
  assert load_records(str(tmp_path / "d.parquet"), offset=4) == ROWS[4:]
  (tmp_path / "obj.json").write_text(json.dumps({"rows": ROWS}))
  with pytest.raises(DataError, match="list"):
    load_records(str(tmp_path / "obj.json"))


def test_relative_paths_resolve_under_kdknob_data(tmp_path, monkeypatch):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "test.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
  monkeypatch.setenv("KDKNOB_DATA", str(tmp_path))
  assert data_root() == tmp_path
  assert load_records("mine/test.jsonl") == ROWS[:1]
  assert load_records("mine") == ROWS[:1]  # a directory: <split or test>.jsonl inside


def test_invalid_utf8_names_file_and_line(tmp_path):
  """A Latin-1 byte in a data file: a DataError with the line and the fix, not a raw
  UnicodeDecodeError, in both JSON forms."""
  jsonl = tmp_path / "latin1.jsonl"
  jsonl.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"question": "caf\xe9", "answer": "1"}\n')
  with pytest.raises(DataError, match=re.escape(f"{jsonl}:2: not UTF-8 text (byte 0xe9")):
    load_records(str(jsonl))
  whole = tmp_path / "latin1.json"
  whole.write_bytes(b'[\n' + json.dumps(ROWS[0]).encode() + b',\n{"question": "\xff"}\n]\n')
  with pytest.raises(DataError, match=re.escape(f"{whole}:3: not UTF-8 text")) as info:
    load_records(str(whole))
  assert "iconv" in str(info.value)


def test_bad_json_line_names_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"question": "q", oops}\n')
  with pytest.raises(DataError, match=re.escape(f"{path}:3: invalid JSON")):
    load_records(str(path))
  path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(["not", "an", "object"]) + "\n")
  with pytest.raises(DataError, match=re.escape(f"{path}:2: expected a JSON object")):
    load_records(str(path))


def test_missing_file_says_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.setenv("KDKNOB_DATA", str(tmp_path / "data"))
  with pytest.raises(DataError) as info:
    load_records("nowhere/test.jsonl")
  message = str(info.value)
  assert "not found" in message and str(tmp_path / "data" / "nowhere" / "test.jsonl") in message
  assert isinstance(info.value, ValueError)


def test_dataset_name_goes_to_datasets_and_its_failure_is_explained(tmp_path, monkeypatch):
  """A stand-in `datasets` module: no network or HF cache is touched."""
  calls = []

  def load_dataset(name, config, split):
    calls.append((name, config, split))
    if name == "absent/set":
      raise FileNotFoundError("Couldn't find 'absent/set' on the Hub or in the cache")
    return [dict(r) for r in ROWS]

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("KDKNOB_DATA", str(tmp_path))
  assert load_records("openai/gsm8k:main", limit=2) == ROWS[:2]
  assert load_records("some/set", split="train", offset=1, limit=1) == ROWS[1:2]
  assert calls == [("openai/gsm8k", "main", "test"), ("some/set", None, "train")]
  with pytest.raises(DataError, match=r"(?s)not a file \(tried .*absent.*local HF cache"):
    load_records("absent/set")


@pytest.mark.parametrize("name", ["arith", "arith_small"])
def test_arith_problems_are_correct_distinct_and_graded_by_the_gsm8k_task(tmp_path, name):
  """The built-in arithmetic splits: every worked step's arithmetic holds, the final answer is
  the gold the gsm8k task reads, train and test share no question, and the files are the
  generator's output for seed 0 (`small` for arith_small, whose results stay under 100)."""
  import re  # pylint: disable=g-import-not-at-top
  from kdknob_jax.data import arith, get_task, load_records  # pylint: disable=g-import-not-at-top
  small = name == "arith_small"
  task = get_task("gsm8k")
  train = load_records(f"builtin:{name}/train.jsonl")
  test = load_records(f"builtin:{name}/test.jsonl")
  assert (len(train), len(test)) == (4000, 500)
  assert not {r["question"] for r in train} & {r["question"] for r in test}
  ops = {"*": lambda a, b: a * b, "+": lambda a, b: a + b, "-": lambda a, b: a - b,
         "/": lambda a, b: a / b}
  for row in list(train)[:400] + list(test):
    steps = re.findall(r"(\d+) ([*+/-]) (\d+) = \$?(\d+)", row["answer"])
    assert len(steps) == 3, row
    for a, op, b, c in steps:
      assert ops[op](int(a), int(b)) == int(c), row
      assert not small or int(c) < 100, row
    final = row["answer"].rsplit("####", 1)[1].strip()
    assert int(final) > 0 and task.gold(row) == final == steps[-1][3]
    assert task.is_correct(row["answer"], row)  # the worked solution grades as correct
  paths = arith.write_splits(tmp_path, 4000, 500, 0, small=small)
  assert [json.loads(x) for x in paths["test"].read_text().splitlines()] == list(test)


def test_builtin_rows_are_located_by_their_builtin_name():
  """Reports record each row's origin; a built-in file's is its `builtin:` name, which holds on
  every machine, not the path the package happens to be installed at."""
  from kdknob_jax.data import load_records  # pylint: disable=g-import-not-at-top
  rows = load_records("builtin:arith_small/test.jsonl", offset=2, limit=3)
  assert [rows.where(i) for i in range(3)] == [
      f"builtin:arith_small/test.jsonl:{n}" for n in (3, 4, 5)]
