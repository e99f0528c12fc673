"""The command-line options that say where the cluster is, shared by `mlscale rollout` and
`mlscale operator` (each documents its own namespace default)."""

from typing import Annotated

import typer

Context = Annotated[str | None, typer.Option(help="kubeconfig context.")]
Kubeconfig = Annotated[str | None, typer.Option(help="kubeconfig file.")]
Server = Annotated[
    str | None, typer.Option(help="API server URL, bypassing kubeconfig.", hidden=True)
]
