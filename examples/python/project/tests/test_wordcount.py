"""Tests for wordcount (plain asserts: run_tests.py runs every test_*)."""

import wordcount


def test_words_are_lowercased_and_split_on_punctuation():
    assert wordcount.words("Hello, world! HELLO again.") == ["hello", "world", "hello", "again"]


def test_apostrophes_stay_inside_words():
    assert wordcount.words("it's 'quoted'") == ["it's", "quoted"]


def test_count():
    assert wordcount.count("a b a c a b") == {"a": 3, "b": 2, "c": 1}


def test_top_breaks_ties_alphabetically():
    assert wordcount.top("b a c b a d", n=3) == [("a", 2), ("b", 2), ("c", 1)]


def test_empty_text():
    assert wordcount.top("") == []
