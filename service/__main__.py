"""`python -m service`: serve the configured model (see `mlscale serve --help`)."""

import sys

from service.cli import app

app(["serve", *sys.argv[1:]])
