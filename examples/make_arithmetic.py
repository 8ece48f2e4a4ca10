#!/usr/bin/env python3
"""Synthetic multi-step arithmetic word problems in chat form (the example fine-tuning task).

Contract:
  - Writes <out>/arith-train.jsonl and <out>/arith-test.jsonl, one record per line:
      {"messages": [{"role": "user", "content": <question>},
                    {"role": "assistant", "content": "7 + 5 = 12. 12 - 3 = 9. #### 9"}]}
  - Every problem has 2 or 3 operations among +, - and x on small numbers; every intermediate and
    final value is a non-negative integer. The assistant turn shows each step as "a op b = c."
    and ends with "#### <answer>" (the evaluator compares the text after the last "####").
  - Deterministic: the same --seed and counts give byte-identical files (random.Random(seed) only;
    no hash-order or clock dependence). Train and test share no identical question text.
  - Python 3 standard library only.

Usage:
  python3 examples/make_arithmetic.py --seed 1234 --train 2000 --test 200 --out examples/data
"""

import argparse
import json
import os
import random
import sys
import tempfile

# (name, pronoun, possessive)
PEOPLE = [
    ("Mia", "She", "her"), ("Liam", "He", "his"), ("Emma", "She", "her"), ("Noah", "He", "his"),
    ("Olivia", "She", "her"), ("Ethan", "He", "his"), ("Ava", "She", "her"), ("Lucas", "He", "his"),
    ("Sofia", "She", "her"), ("Mason", "He", "his"), ("Chloe", "She", "her"), ("Leo", "He", "his"),
    ("Zoe", "She", "her"), ("Omar", "He", "his"), ("Priya", "She", "her"), ("Kenji", "He", "his"),
    ("Nora", "She", "her"), ("Diego", "He", "his"), ("Hana", "She", "her"), ("Samuel", "He", "his"),
    ("Grace", "She", "her"), ("Arjun", "He", "his"), ("Lena", "She", "her"), ("Tomas", "He", "his"),
    ("Amara", "She", "her"), ("Felix", "He", "his"), ("Ines", "She", "her"), ("Jonah", "He", "his"),
]

FRIENDS = ["a friend", "{pos} sister", "{pos} brother", "a neighbour", "a classmate",
           "{pos} cousin", "a teacher", "{pos} grandmother"]

# (plural noun, container, edible)
OBJECTS = [
    ("marbles", "bags", False), ("apples", "baskets", True), ("stickers", "sheets", False),
    ("books", "boxes", False), ("coins", "jars", False), ("pencils", "packs", False),
    ("cookies", "tins", True), ("stamps", "albums", False), ("shells", "buckets", False),
    ("cards", "decks", False), ("balloons", "bunches", False), ("oranges", "crates", True),
    ("candies", "bags", True), ("toy cars", "boxes", False), ("crayons", "boxes", False),
    ("beads", "strings", False), ("eggs", "cartons", True), ("muffins", "trays", True),
    ("plums", "bowls", True), ("buttons", "cups", False),
]

ADD_PHRASES = [
    "finds {n} more", "buys {n} more", "gets {n} more from {friend}", "receives {n} more as a gift",
    "picks up {n} more", "collects {n} more", "wins {n} more", "is given {n} more",
]
SUB_PHRASES = [
    "gives {n} to {friend}", "loses {n}", "sells {n}", "gives away {n}", "trades away {n}",
    "donates {n}", "hands {n} to {friend}", "drops {n}",
]
SUB_PHRASES_EDIBLE = ["eats {n}", "shares {n} with {friend}"]
MUL_PHRASES = {
    2: ["doubles {pos} collection", "ends up with twice as many"],
    3: ["triples {pos} collection", "ends up with three times as many"],
    4: ["ends up with four times as many"],
    5: ["ends up with five times as many"],
}
QUESTIONS = [
    "How many {obj} does {name} have now?",
    "How many {obj} does {name} end up with?",
    "How many {obj} does {name} have at the end?",
]
QUESTION_AFTER_SUB = "How many {obj} does {name} have left?"
JOIN2 = ["{p} {a}, then {b}.", "{p} {a}. Then {pl} {b}.", "First {pl} {a}. After that {pl} {b}."]
JOIN1 = ["{p} {a}.", "Then {pl} {a}.", "Later {pl} {a}."]


def make_problem(rng):
    """Returns (question, answer) for one random problem."""
    name, pron, pos = rng.choice(PEOPLE)
    obj, container, edible = rng.choice(OBJECTS)
    num_ops = rng.choice([2, 3])
    steps = []  # (a, op, b, result)
    phrases = []
    # Opening: either "has N objects" or "has K containers with M objects in each" (a x step).
    if rng.random() < 0.3:
        k = rng.randint(2, 6)
        m = rng.randint(2, 9)
        value = k * m
        opening = f"{name} has {k} {container} with {m} {obj} in each."
        steps.append((k, "x", m, value))
        remaining = num_ops - 1
    else:
        value = rng.randint(2, 20)
        opening = f"{name} has {value} {obj}."
        remaining = num_ops
    used_mul = bool(steps)
    friend = rng.choice(FRIENDS).format(pos=pos)
    for _ in range(remaining):
        choices = ["+", "-"]
        if not used_mul and value <= 25:
            choices.append("x")
        op = rng.choice(choices)
        if op == "-" and value == 0:
            op = "+"
        if op == "+":
            n = rng.randint(1, 15)
            phrase = rng.choice(ADD_PHRASES).format(n=n, friend=friend)
            result = value + n
        elif op == "-":
            n = rng.randint(1, min(value, 15))
            pool = SUB_PHRASES + (SUB_PHRASES_EDIBLE if edible else [])
            phrase = rng.choice(pool).format(n=n, friend=friend)
            result = value - n
        else:
            n = rng.choice([2, 2, 3, 3, 4, 5])
            phrase = rng.choice(MUL_PHRASES[n]).format(pos=pos)
            result = value * n
            used_mul = True
        steps.append((value, op, n, result))
        phrases.append(phrase)
        value = result
    pl = pron.lower()
    if len(phrases) == 3:
        body = (rng.choice(JOIN2).format(p=pron, pl=pl, a=phrases[0], b=phrases[1]) + " " +
                rng.choice(JOIN1[1:]).format(p=pron, pl=pl, a=phrases[2]))
    elif len(phrases) == 2:
        body = rng.choice(JOIN2).format(p=pron, pl=pl, a=phrases[0], b=phrases[1])
    else:
        body = rng.choice(JOIN1[:1]).format(p=pron, pl=pl, a=phrases[0])
    questions = QUESTIONS + ([QUESTION_AFTER_SUB] if steps[-1][1] == "-" else [])
    question = " ".join([opening, body, rng.choice(questions).format(obj=obj, name=name)])
    answer = " ".join(f"{a} {op} {b} = {r}." for a, op, b, r in steps) + f" #### {value}"
    return question, answer


def record(question, answer):
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def write_jsonl(path, records):
    """Writes records atomically (temporary file in the same directory, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, separators=(", ", ": ")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--out", default="examples/data")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    seen = set()
    problems = []
    attempts = 0
    while len(problems) < args.train + args.test:
        attempts += 1
        if attempts > 100 * (args.train + args.test) + 1000:
            sys.exit("make_arithmetic: cannot find enough distinct problems; lower --train/--test")
        q, a = make_problem(rng)
        if q in seen:
            continue
        seen.add(q)
        problems.append((q, a))
    train = [record(q, a) for q, a in problems[:args.train]]
    test = [record(q, a) for q, a in problems[args.train:]]
    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "arith-train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "arith-test.jsonl"), test)
    print(f"make_arithmetic: seed {args.seed}: {len(train)} train, {len(test)} test records "
          f"in {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
