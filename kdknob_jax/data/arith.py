"""Multi-step arithmetic word problems with worked solutions, in GSM8K's format.

The knob study needs a verifiable task whose answers carry reasoning (three or four worked
steps, 35-60 tokens) and that a small model can learn on a CPU: GSM8K itself is beyond a
135M-parameter model. Every problem here is generated from a template with small numbers; its
`answer` is the worked solution ending in `#### <number>`, so the `gsm8k` task's prompt, parser
and grader apply unchanged (`task="gsm8k"`, `source="builtin:arith/train.jsonl"`).

  python -m kdknob_jax.data.arith OUT_DIR [--train 4000] [--test 500] [--seed 0] [--small]

writes `train.jsonl` and `test.jsonl`; the built-in copies were written with the defaults
(`builtin:arith`) and with `--small` (`builtin:arith_small`: one-digit factors, results under 100).
Train and test share no question text.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Callable

_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Ema", "Farid", "Gita", "Hugo", "Ines", "Jon", "Kira",
          "Liam", "Mina", "Noah", "Omar", "Priya", "Rosa", "Sam", "Tara", "Yuki")
_ITEMS = ("apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "cards")


def _restock(r: random.Random, small: bool) -> tuple[str, str, int]:
  name, item = r.choice(_NAMES), r.choice(_ITEMS)
  if small:
    a, boxes, per = r.randint(2, 20), r.randint(2, 5), r.randint(2, 6)
  else:
    a, boxes, per = r.randint(5, 60), r.randint(2, 9), r.randint(3, 12)
  bought = boxes * per
  total = a + bought
  gift = r.randint(1, min(total - 1, 9) if small else total - 1)
  left = total - gift
  q = (f"{name} has {a} {item}. {name} buys {boxes} boxes with {per} {item} in each, then "
       f"gives {gift} {item} to a friend. How many {item} does {name} have now?")
  s = (f"The boxes hold {boxes} * {per} = {bought} {item}.\n"
       f"With the ones {name} had: {a} + {bought} = {total} {item}.\n"
       f"After giving {gift} away: {total} - {gift} = {left} {item}.\n#### {left}")
  return q, s, left


def _change(r: random.Random, small: bool) -> tuple[str, str, int]:
  name, item = r.choice(_NAMES), r.choice(_ITEMS)
  if small:
    price, count = r.randint(2, 9), r.randint(2, 5)
  else:
    price, count = r.randint(2, 15), r.randint(2, 9)
  cost = price * count
  extra = r.randint(1, 5 if small else 9)
  paid = (cost // 10 + 1) * 10 + 10 * r.randint(0, 1 if small else 3)
  spent = cost + extra
  while paid <= spent:
    paid += 10
  change = paid - spent
  q = (f"A shop sells {item} for ${price} each. {name} buys {count} {item} and a bag for "
       f"${extra}, and pays with ${paid}. How much change does {name} get?")
  s = (f"The {item} cost {count} * {price} = ${cost}.\n"
       f"With the bag: {cost} + {extra} = ${spent}.\n"
       f"The change is {paid} - {spent} = ${change}.\n#### {change}")
  return q, s, change


def _pages(r: random.Random, small: bool) -> tuple[str, str, int]:
  name = r.choice(_NAMES)
  if small:
    per_day, days, last = r.randint(2, 9), r.randint(2, 5), r.randint(1, 9)
  else:
    per_day, days, last = r.randint(4, 25), r.randint(2, 7), r.randint(1, 20)
  read = per_day * days
  done = read + last
  book = done + (r.randint(1, 20) if small else r.randint(5, 150))
  left = book - done
  q = (f"A book has {book} pages. {name} reads {per_day} pages a day for {days} days and "
       f"then {last} more pages. How many pages are left to read?")
  s = (f"In {days} days {name} reads {days} * {per_day} = {read} pages.\n"
       f"With the extra pages: {read} + {last} = {done} pages.\n"
       f"Pages left: {book} - {done} = {left}.\n#### {left}")
  return q, s, left


def _rooms(r: random.Random, small: bool) -> tuple[str, str, int]:
  if small:
    rows, per_row, rooms = r.randint(2, 5), r.randint(3, 8), r.randint(2, 4)
  else:
    rows, per_row, rooms = r.randint(2, 6), r.randint(5, 20), r.randint(2, 8)
  total = rows * per_row
  # the chairs taken away leave a multiple of the rooms: the share is a whole number
  removed = total % rooms + rooms * r.randint(0 if total % rooms else 1, 2)
  removed = min(removed, total - rooms) if total - rooms >= 1 else removed
  kept = total - removed
  each = kept // rooms
  # Small numbers alone allow a few hundred of these: a name makes enough distinct questions.
  place = f"{r.choice(_NAMES)}'s hall" if small else "A hall"
  q = (f"{place} has {rows} rows of {per_row} chairs. {removed} chairs are taken away, and the "
       f"rest are shared equally among {rooms} rooms. How many chairs does each room get?")
  s = (f"The hall has {rows} * {per_row} = {total} chairs.\n"
       f"After {removed} are taken: {total} - {removed} = {kept} chairs.\n"
       f"Each room gets {kept} / {rooms} = {each} chairs.\n#### {each}")
  return q, s, each


TEMPLATES: tuple[Callable[[random.Random, bool], tuple[str, str, int]], ...] = (
    _restock, _change, _pages, _rooms)


def generate(n: int, seed: int, exclude: set[str] | None = None,
             small: bool = False) -> list[dict]:
  """`n` distinct problems as {"question", "answer"} rows (templates in turn, seeded).

  Args:
    n: rows.
    seed: the generator's seed.
    exclude: question texts not to produce (another split's).
    small: one-digit factors and small sums, so that every step is within a 135M model's
      reach after a short fine-tune (the knob study's `builtin:arith_small`).
  """
  r = random.Random(seed)
  seen = set(exclude or ())
  rows = []
  while len(rows) < n:
    q, s, _ = TEMPLATES[len(rows) % len(TEMPLATES)](r, small)
    if q in seen:
      continue
    seen.add(q)
    rows.append({"question": q, "answer": s})
  return rows


def write_splits(out: Path, train: int, test: int, seed: int,
                 small: bool = False) -> dict[str, Path]:
  """train.jsonl and test.jsonl in `out` (the test questions first, so they stay fixed when
  the train split grows); `small` as in `generate`."""
  out.mkdir(parents=True, exist_ok=True)
  test_rows = generate(test, seed + 1, small=small)
  train_rows = generate(train, seed, exclude={row["question"] for row in test_rows},
                        small=small)
  paths = {}
  for split, rows in (("train", train_rows), ("test", test_rows)):
    paths[split] = out / f"{split}.jsonl"
    paths[split].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
  return paths


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(prog="python -m kdknob_jax.data.arith", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("out")
  ap.add_argument("--train", type=int, default=4000)
  ap.add_argument("--test", type=int, default=500)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--small", action="store_true", help="small numbers (builtin:arith_small)")
  args = ap.parse_args(argv)
  paths = write_splits(Path(args.out), args.train, args.test, args.seed, args.small)
  for split, path in paths.items():
    print(f"{split}: {path}")


if __name__ == "__main__":
  main()
