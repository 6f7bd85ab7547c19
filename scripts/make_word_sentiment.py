"""Regenerate the ``word-sentiment`` task shipped in ``src/tunekit/tasks/word_sentiment/``.

The source is the VADER sentiment lexicon (``vader_lexicon.txt`` in the PyPI package
``vaderSentiment`` 3.3.2, MIT licence, C.J. Hutto): about 7,500 tokens, each with the mean of ten
human raters' scores from -4 (extremely negative) to +4 (extremely positive). The script reads the
lexicon straight from the downloaded wheel (a zip file); vaderSentiment is not a dependency of
tunekit and is never imported::

    python -m pip download --no-deps vaderSentiment==3.3.2 -d /tmp/dl
    python scripts/make_word_sentiment.py /tmp/dl/vaderSentiment-3.3.2-py2.py3-none-any.whl

Rows are ``{"text": word, "label": "positive" | "negative"}``: alphabetic tokens only (emoticons,
``<3`` and the like are skipped), ``positive`` where the mean rating is at least +1.0 and
``negative`` where it is at most -1.0 (the words in between are left out). The split is balanced
(300 + 300 training words, 100 + 100 test words) and seeded; words that share their first five
letters (``foolish``, ``foolishly``, ``foolishness``) are kept on one side of the split, so a test
word is not a training word with another ending. The output is deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import zipfile
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "tunekit" / "tasks" / "word_sentiment"
LEXICON = "vaderSentiment/vader_lexicon.txt"
WHEEL_SHA256 = "3bf1d243b98b1afad575b9f22bc2cb1e212b94ff89ca74f8a23a588d024ea311"
"""sha256 of vaderSentiment-3.3.2-py2.py3-none-any.whl as pip downloaded it from PyPI."""
SEED = 20261202
THRESHOLD = 1.0
SIZES = {"train": 300, "test": 100}
"""Words per class in each split."""
PREFIX = 5


def read_lexicon(wheel: Path) -> list[tuple[str, float]]:
    """``(token, mean rating)`` of every line of the lexicon inside the wheel."""
    with zipfile.ZipFile(wheel) as z:
        text = z.read(LEXICON).decode("utf-8")
    out = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            out.append((fields[0], float(fields[1])))
    return out


def labelled(lexicon: list[tuple[str, float]]) -> dict[str, list[str]]:
    """Alphabetic words by label; ratings between the thresholds are left out."""
    by_label: dict[str, list[str]] = {"negative": [], "positive": []}
    for token, mean in lexicon:
        if not (token.isascii() and token.isalpha()):
            continue
        word = token.lower()
        if mean >= THRESHOLD:
            by_label["positive"].append(word)
        elif mean <= -THRESHOLD:
            by_label["negative"].append(word)
    return {label: sorted(set(words)) for label, words in by_label.items()}


def split(words: list[str], rng: random.Random) -> dict[str, list[str]]:
    """``SIZES`` words of one class per split, whole prefix groups on one side."""
    groups: dict[str, list[str]] = defaultdict(list)
    for word in words:
        groups[word[:PREFIX]].append(word)
    keys = sorted(groups)
    rng.shuffle(keys)
    out: dict[str, list[str]] = {"test": [], "train": []}
    for key in keys:
        for name in ("test", "train"):
            if len(out[name]) + len(groups[key]) <= SIZES[name]:
                out[name] += groups[key]
                break
    for name, size in SIZES.items():
        if len(out[name]) < size:  # fill up with single words of groups that did not fit whole
            spare = [w for k in keys for w in groups[k] if w not in out["test"] and w not in out["train"]]
            out[name] += spare[: size - len(out[name])]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", type=Path, nargs="?", default=Path("/tmp/dl/vaderSentiment-3.3.2-py2.py3-none-any.whl"))
    args = parser.parse_args()
    digest = hashlib.sha256(args.wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{args.wheel} has sha256 {digest}, not that of vaderSentiment 3.3.2 ({WHEEL_SHA256}).")
    rng = random.Random(SEED)
    words = labelled(read_lexicon(args.wheel))
    rows: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for label in sorted(words):
        for name, chosen in split(words[label], rng).items():
            rows[name] += [{"text": w, "label": label} for w in chosen]
    assert not {r["text"] for r in rows["train"]} & {r["text"] for r in rows["test"]}
    OUT.mkdir(parents=True, exist_ok=True)
    for name, items in rows.items():
        rng.shuffle(items)
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in items:
                f.write(json.dumps(row) + "\n")
        print(f"{name}: {len(items)} rows ({sum(r['label'] == 'positive' for r in items)} positive) -> {OUT / (name + '.jsonl')}")
    print({label: len(w) for label, w in words.items()}, "labelled words in the lexicon")


if __name__ == "__main__":
    main()
