"""The domain errors. Each carries its HTTP status; `app.py` turns them into
`{"error": "..."}` in one place, the Open Inference Protocol's error shape."""


class MLScaleError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # (model, version) once a request has been routed to a version, so that error
        # responses name the version that answered, like successful ones.
        self.answered_by: tuple[str, str] | None = None


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
