"""The domain errors. Each carries its HTTP status; `answer.error_answer` turns them into
`{"error": "..."}`, the Open Inference Protocol's error shape, in one place."""


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


class InferenceFailed(MLScaleError):
    """The model raised while predicting valid input: the server's fault, not the client's."""

    status_code = 500


class StoreError(MLScaleError):
    """The model store refused to write or load a version (exists, tampered, incompatible)."""


class InvalidModel(MLScaleError):
    """What was given to publish is not a servable fitted estimator (or not with that data)."""

    status_code = 400
