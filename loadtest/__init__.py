"""Load tests that show the autoscaler at work, and a report a person can look at."""

# Set by `mlscale loadtest` for the program it starts, so that its help names the command used.
PROG_ENV = "MLSCALE_LOADTEST_PROG"
