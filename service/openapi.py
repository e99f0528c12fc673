"""OpenAPI descriptions of the routes, for the ones FastAPI documents itself and the hot routes
it never sees (their descriptions live beside their code, in `fastpath.py`)."""

from typing import Any

from pydantic import BaseModel

from mlscale.service import protocol

JSON = "application/json"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": protocol.ErrorResponse, "description": text}
    for code, text in [
        (400, "Invalid input"), (404, "Unknown model or version"), (413, "Body too large"),
        (415, "Not JSON"), (500, "The model failed"), (503, "Not ready"),
    ]
}  # fmt: skip


def ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for a handler that parses the raw body itself."""
    return {"requestBody": {"required": True, "content": {JSON: {"schema": ref(model)}}}}


def operation(
    summary: str, tag: str, ok: type[BaseModel], errors: list[int], body: type[BaseModel] | None
) -> dict[str, Any]:
    responses = {"200": {"description": "OK", "content": {JSON: {"schema": ref(ok)}}}}
    for code in errors:
        doc = ERRORS[code]
        schema = ref(protocol.ErrorResponse)
        responses[str(code)] = {
            "description": doc["description"],
            "content": {JSON: {"schema": schema}},
        }
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op.update(body_doc(body))
    return op


def name_params(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]
