"""`python -m rollout`: see `mlscale rollout --help`."""

from rollout.cli import app

app(prog_name="python -m rollout")
