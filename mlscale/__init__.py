"""mlscale: serve versioned scikit-learn models over the Open Inference Protocol, autoscaled on
Kubernetes. The installed packages: `mlscale.service` (the server, publishing, model images),
`mlscale.rollout` (the rollout operator) and `mlscale.loadtest` (load tests and reports)."""

from mlscale.service import __version__

__all__ = ["__version__"]
