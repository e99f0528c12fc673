"""OpenAPI building blocks for the route table (`routes.py`), whose handlers parse their own
bodies, so FastAPI never sees the routes to describe them."""

from typing import Any

from pydantic import BaseModel

from mlscale.service.codecs import protocol

JSON = "application/json"
ERRORS = {
    400: "Invalid input", 404: "Unknown model or version", 413: "Body too large",
    415: "Not JSON, or an unknown Content-Encoding", 422: "The model refused the input",
    500: "The model failed", 503: "Not ready",
}  # fmt: skip


def ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def operation(
    summary: str,
    tag: str,
    ok: type[BaseModel] | None,
    errors: list[int],
    body: type[BaseModel] | None,
) -> dict[str, Any]:
    """One operation; `ok` None: the 200 body is plain text."""
    content = {JSON: {"schema": ref(ok)}} if ok else {"text/plain": {"schema": {"type": "string"}}}
    responses = {"200": {"description": "OK", "content": content}}
    for code in errors:
        responses[str(code)] = {
            "description": ERRORS[code],
            "content": {JSON: {"schema": ref(protocol.ErrorResponse)}},
        }
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    return op


def name_params(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


def components(models: set[type[BaseModel]]) -> dict[str, Any]:
    """The schemas of these models and of the models they refer to, by name."""
    schemas: dict[str, Any] = {}
    for model in sorted(models, key=lambda m: m.__name__):
        doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(doc.pop("$defs", {}))
        schemas[model.__name__] = doc
    return schemas
