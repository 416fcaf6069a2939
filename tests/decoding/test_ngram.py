from specserve.decoding.ngram import lookup


def test_longest_suffix_wins_and_latest_occurrence():
    toks = [1, 2, 3, 9, 9, 2, 3, 7, 8, 5, 2, 3]
    # suffix [2, 3] occurs at 1 and 5; the latest (5) is followed by 7, 8, 5
    assert lookup(toks, 3, n_max=2, n_min=1) == [7, 8, 5]
    # a longer suffix [5, 2, 3] has no earlier match, so n falls back to 2
    assert lookup(toks, 2, n_max=3, n_min=2) == [7, 8]


def test_no_match_and_bounds():
    assert lookup([1, 2, 3, 4], 3, n_max=3, n_min=1) == []
    assert lookup([5], 3, n_max=3, n_min=1) == []
    assert lookup([1, 2, 1], 0, n_max=3, n_min=1) == []
    # the continuation may run into the suffix itself, and stops at the end of the sequence
    assert lookup([4, 4, 4], 5, n_max=2, n_min=1) == [4]
