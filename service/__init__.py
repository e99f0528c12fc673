"""mlscale: serve versioned scikit-learn models over the Open Inference Protocol."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlscale")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
