"""`python -m mlscale.rollout`: see `mlscale rollout --help`."""

from mlscale.rollout.cli import app
from mlscale.service.helptext import unwrap_help

unwrap_help(app)
app(prog_name="python -m mlscale.rollout")
