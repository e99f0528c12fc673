"""The fault benchmark's figures from its load's answers (the cluster part runs in
`make bench-faults`)."""

from bench.faults import Load


def test_figures_count_the_window_and_its_longest_gap_without_a_success():
    load = Load("http://127.0.0.1:1")
    # (time, succeeded): failures from 11 to 13 s, the next success at 14 s
    load.answers = [(9.0, True), (10.5, True), (11.0, False), (13.0, False), (14.0, True),
                    (15.0, True), (30.0, True)]  # fmt: skip
    assert load.figures(10.0, 16.0) == {"sent": 5, "failed": 2, "longest_gap_s": 3.5}
    # Nothing succeeded in the window: the gap is all of it.
    assert load.figures(11.0, 13.5)["longest_gap_s"] == 2.5
