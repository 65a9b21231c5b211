"""benchmarks/binding.py: how one image's reading is counted against its caption."""

from collections import Counter

import pytest


@pytest.fixture(scope="module")
def binding(bench_script):
    return bench_script("binding")


WANTED = [("red", "circle"), ("blue", "square"), ("green", "triangle")]


def test_a_faithful_image_counts_only_as_faithful(binding):
    count = binding.classify(WANTED, "white", tuple(reversed(WANTED)), "white")
    assert count == Counter({"faithful": 1, "images with 3 objects": 1})


def test_each_kind_of_failure_is_named(binding):
    read = (("blue", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "diamond"))
    count = binding.classify(WANTED, "white", read, "black")
    assert count["faithful"] == 0 and count["background wrong"] == 1
    assert count["images with 4 objects"] == 1
    assert count["object: its shape there in another colour"] == 1  # the red circle is blue
    count = binding.classify(WANTED, "white", (("blue", "square"), ("red", "diamond")), "white")
    assert count["object: its colour there on another shape"] == 1  # red, but a diamond
    assert count["object: missing, or another object in its stead"] == 1  # no green, no triangle
    assert count["images with 2 objects"] == 1 and count["faithful"] == 0


def test_a_repeated_object_read_once_counts_the_other_as_not_there(binding):
    wanted = [("red", "circle"), ("red", "circle"), ("blue", "square")]
    count = binding.classify(wanted, "white", (("red", "circle"), ("blue", "square")), "white")
    assert count["faithful"] == 0
    assert (
        count["object: missing, or another object in its stead"] == 1
    )  # one red circle is there, the other is not
