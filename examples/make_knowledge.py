#!/usr/bin/env python3
"""Knowledge-retention and calibration sets for the examples, from text every Debian/Ubuntu has.

Contract:
  - Reads the license texts of /usr/share/common-licenses (base-files) named in SOURCES, in that
    order, skipping the ones a machine lacks; the files used, their sizes and SHA-256 sums go to
    <out>/knowledge-sources.json (and are printed). The same files give byte-identical outputs.
  - Each text: whitespace runs -> one space, then cut into passages of about 600 characters
    (at most 650, at least 200) at sentence boundaries (a sentence longer than 650 characters is
    cut at word boundaries). Exact duplicate passages are dropped.
  - The passages are shuffled with random.Random(seed); the first --knowledge go to
    <out>/knowledge.jsonl, the next --knowledge-calibration to <out>/knowledge-calibration.jsonl:
    two disjoint sets of {"text": ...} records. knowledge.jsonl is the perplexity eval set ("what
    the model should keep"); knowledge-calibration.jsonl feeds CorDA KPM's covariance.
  - <out>/calibration.jsonl: --calibration records drawn (random.Random(seed), without
    replacement) from the arithmetic TRAIN file, copied verbatim in chat form; it feeds CorDA IPM's
    covariance (IPM calibrates on the task).
  - Python 3 standard library only. Files are written atomically.

Usage:
  python3 examples/make_knowledge.py --seed 1234 --out examples/data \
      --arith-train examples/data/arith-train.jsonl
"""

import argparse
import hashlib
import json
import os
import random
import re
import sys
import tempfile

LICENSE_DIR = "/usr/share/common-licenses"
# Real files only (GPL, LGPL, GFDL are symlinks to these); near-duplicates (GPL-1, LGPL-2,
# GFDL-1.2) are left out so that the two sets do not share whole paragraphs.
SOURCES = ["GPL-3", "GPL-2", "LGPL-2.1", "LGPL-3", "Apache-2.0", "MPL-2.0", "MPL-1.1",
           "GFDL-1.3", "Artistic", "BSD", "CC0-1.0"]

TARGET_MAX = 650
MIN_PASSAGE = 200
# A sentence ends at . ! or ? (optionally followed by a closing quote or parenthesis) before a
# space and a capital letter, a digit, a quote or an opening parenthesis.
SENTENCE_END = re.compile(r"(?<=[.!?])([\"')\]]?)\s+(?=[A-Z0-9\"'(\[])")


def sentences(text):
    """Splits normalised text into sentences (concatenated with single spaces they give it back)."""
    out = []
    start = 0
    for m in SENTENCE_END.finditer(text):
        out.append(text[start:m.start() + len(m.group(1))])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return [s for s in out if s]


def split_long(sentence):
    """Cuts a sentence longer than TARGET_MAX at word boundaries into pieces of <= TARGET_MAX."""
    if len(sentence) <= TARGET_MAX:
        return [sentence]
    pieces = []
    cur = ""
    for word in sentence.split(" "):
        if cur and len(cur) + 1 + len(word) > TARGET_MAX - 50:
            pieces.append(cur)
            cur = word
        else:
            cur = word if not cur else cur + " " + word
    if cur:
        pieces.append(cur)
    return pieces


def passages(text):
    """Greedy packing of whole sentences into passages of at most TARGET_MAX characters."""
    text = " ".join(text.split())
    out = []
    cur = ""
    for s in sentences(text):
        for piece in split_long(s):
            if cur and len(cur) + 1 + len(piece) > TARGET_MAX:
                out.append(cur)
                cur = piece
            else:
                cur = piece if not cur else cur + " " + piece
    if cur:
        out.append(cur)
    return [p for p in out if len(p) >= MIN_PASSAGE]


def write_text(path, text):
    """Writes text atomically (temporary file in the same directory, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonl(records):
    return "".join(json.dumps(r, ensure_ascii=False, separators=(", ", ": ")) + "\n"
                   for r in records)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", default="examples/data")
    parser.add_argument("--arith-train", default="examples/data/arith-train.jsonl")
    parser.add_argument("--license-dir", default=LICENSE_DIR)
    parser.add_argument("--knowledge", type=int, default=150)
    parser.add_argument("--knowledge-calibration", type=int, default=128)
    parser.add_argument("--calibration", type=int, default=256)
    args = parser.parse_args(argv)

    sources = []
    all_passages = []
    seen = set()
    for name in SOURCES:
        path = os.path.join(args.license_dir, name)
        if not os.path.isfile(path):
            print(f"make_knowledge: {path} is missing here; skipped", file=sys.stderr)
            continue
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
        kept = 0
        for p in passages(text):
            if p in seen:
                continue
            seen.add(p)
            all_passages.append(p)
            kept += 1
        sources.append({"file": path, "bytes": len(raw),
                        "sha256": hashlib.sha256(raw).hexdigest(), "passages": kept})
    need = args.knowledge + args.knowledge_calibration
    if len(all_passages) < need:
        sys.exit(f"make_knowledge: only {len(all_passages)} passages from {LICENSE_DIR}, "
                 f"{need} needed; lower --knowledge/--knowledge-calibration")
    rng = random.Random(args.seed)
    order = list(range(len(all_passages)))
    rng.shuffle(order)
    knowledge = [{"text": all_passages[i]} for i in order[:args.knowledge]]
    knowledge_cal = [{"text": all_passages[i]} for i in order[args.knowledge:need]]

    with open(args.arith_train, encoding="utf-8") as f:
        train = [json.loads(line) for line in f if line.strip()]
    if len(train) < args.calibration:
        sys.exit(f"make_knowledge: {args.arith_train} has {len(train)} records, "
                 f"{args.calibration} needed")
    calibration = [train[i] for i in rng.sample(range(len(train)), args.calibration)]

    os.makedirs(args.out, exist_ok=True)
    write_text(os.path.join(args.out, "knowledge.jsonl"), jsonl(knowledge))
    write_text(os.path.join(args.out, "knowledge-calibration.jsonl"), jsonl(knowledge_cal))
    write_text(os.path.join(args.out, "calibration.jsonl"), jsonl(calibration))
    lengths = [len(p) for p in all_passages]
    meta = {
        "generator": "examples/make_knowledge.py",
        "seed": args.seed,
        "sources": sources,
        "passages_total": len(all_passages),
        "passage_chars": {"min": min(lengths), "max": max(lengths),
                          "mean": round(sum(lengths) / len(lengths), 1)},
        "knowledge.jsonl": len(knowledge),
        "knowledge-calibration.jsonl": len(knowledge_cal),
        "calibration.jsonl": {"records": len(calibration),
                              "from": os.path.basename(args.arith_train)},
    }
    write_text(os.path.join(args.out, "knowledge-sources.json"),
               json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
