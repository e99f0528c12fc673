"""The fault and soak benchmarks' figures from what they recorded (the cluster parts run in
`make bench-faults` and `make soak`), and the in-process profile."""

import subprocess
import sys
from pathlib import Path

from bench.ab import serve_command
from bench.faults import Load
from bench.soak import growth, pace_for


def test_figures_count_the_window_and_its_longest_gap_without_a_success():
    load = Load("http://127.0.0.1:1")
    # (time, succeeded): failures from 11 to 13 s, the next success at 14 s
    load.answers = [(9.0, True), (10.5, True), (11.0, False), (13.0, False), (14.0, True),
                    (15.0, True), (30.0, True)]  # fmt: skip
    assert load.figures(10.0, 16.0) == {"sent": 5, "failed": 2, "longest_gap_s": 3.5}
    # Nothing succeeded in the window: the gap is all of it.
    assert load.figures(11.0, 13.5)["longest_gap_s"] == 2.5


def test_memory_growth_counts_from_each_pods_first_minute():
    samples = [
        (0.0, {"a": 100.0}),  # warming up: not counted
        (60.0, {"a": 200.0}),
        (70.0, {"a": 202.0, "b": 50.0}),  # b, added by the HPA, from its own first minute
        (130.0, {"a": 204.0, "b": 100.0}),
        (600.0, {"a": 206.0, "b": 104.0}),
    ]
    assert growth(samples, settle=60) == {"a": 3.0, "b": 4.0}


def test_the_pace_leaves_room_for_each_answers_latency():
    # 32 connections at 4,000 req/s: one request per 8 ms each, of which 3 ms is the answer.
    assert pace_for(32, 4000, latency_ms=3) == 5
    assert pace_for(32, 4000, latency_ms=0) == 8
    assert pace_for(32, 40000, latency_ms=3) == 1  # out of reach: as fast as it goes


def test_the_profile_drives_the_compiled_pipeline_and_names_the_stages():
    """`make profile`: real requests through the app (a wrong one would stop it), and the
    stages' shares of a request from cProfile."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.profile", "--model", "flowers", "--requests", "256",
         "--profile"], capture_output=True, text=True, check=True, timeout=240,
    ).stdout  # fmt: skip
    assert "flowers (auto):" in out and "µs per request in the app" in out, out
    shares = dict(line.rsplit(": ", 1) for line in out.splitlines() if line.endswith("%"))
    decode = int(shares["decode and check the request"].rstrip("%"))
    assert 0 < decode < 100, shares


def test_the_ab_benchmark_runs_the_revisions_own_server(tmp_path: Path):
    """Run from the revision's folder, `import mlscale.service` found the working tree's
    editable install: `make bench-ab` compared the working tree with itself."""
    tree = tmp_path / "revision"
    for package in ("mlscale", "service", "rollout", "loadtest"):
        (tree / package).mkdir(parents=True)
        (tree / package / "__init__.py").write_text("")
    (tree / "service" / "__main__.py").write_text("print(__file__)\n")
    ran = subprocess.run(serve_command(tree, tmp_path / "packages"), capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    assert Path(ran.stdout.strip()).resolve() == (tree / "service" / "__main__.py").resolve()
