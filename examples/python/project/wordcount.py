"""Count words: the library the example pipelines build and test."""

import re
import sys

VERSION = "1.0.0"

WORD = re.compile(r"[a-z0-9']+")


def words(text):
    """The words of `text`, lower-cased, in order."""
    return [w.strip("'") for w in WORD.findall(text.lower()) if w.strip("'")]


def count(text):
    """A dict word -> occurrences."""
    counts = {}
    for w in words(text):
        counts[w] = counts.get(w, 0) + 1
    return counts


def top(text, n=3):
    """The `n` most common words as (word, count), ties in alphabetical order."""
    return sorted(count(text).items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else 3
    for word, k in top(sys.stdin.read(), n):
        print(f"{k:5d} {word}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
