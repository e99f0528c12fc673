"""`python -m mlscale.service`: serve the configured model (see `mlscale serve --help`)."""

import sys

from mlscale.service.cli import app

app(["serve", *sys.argv[1:]])
