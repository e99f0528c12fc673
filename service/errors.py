"""The domain errors. Each carries its HTTP status; `answer.error_answer` turns them into
`{"error": "..."}`, the Open Inference Protocol's error shape, in one place."""

from mlscale.service.contract import MODEL_REFUSED


class MLScaleError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(MLScaleError):
    status_code = 400


class ModelNotFound(MLScaleError):
    status_code = 404


class ModelNotReady(MLScaleError):
    status_code = 503


class MethodNotAllowed(MLScaleError):
    status_code = 405


class PayloadTooLarge(MLScaleError):
    status_code = 413


class UnsupportedMediaType(MLScaleError):
    status_code = 415


class ModelRefused(MLScaleError):
    """The model raised ValueError on input that passed the signature's checks: scikit-learn's
    way of saying the input is not one it can answer (a category its encoder never saw, a value
    outside its domain). The client's input, so 4xx; 422, apart from the 400s of malformed
    requests, because the rollout's analysis counts it against the version (contract.failed)."""

    status_code = MODEL_REFUSED


class InferenceFailed(MLScaleError):
    """The model raised while predicting valid input: the server's fault, not the client's."""

    status_code = 500


class NothingToServe(MLScaleError):
    """No model of the server's set could be loaded: the server does not start."""


class StoreError(MLScaleError):
    """The model store refused to write or load a version (exists, tampered, incompatible)."""


class InvalidModel(MLScaleError):
    """What was given to publish is not a servable fitted estimator (or not with that data)."""

    status_code = 400
