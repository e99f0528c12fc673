"""`python -m mlscale.rollout`: see `mlscale rollout --help`."""

from mlscale.rollout.cli import app

app(prog_name="python -m mlscale.rollout")
