"""What the load test's users send: a V2 infer body built from the model's metadata, so every
request is valid. Apart from the locustfile, which cannot be imported without Locust patching
the standard library."""

import random
from typing import Any

from mlscale.service.contract import NUMERIC_TYPES, example_request

# What a user sends when the metadata did not answer: the examples' four numbers.
FALLBACK_INPUTS = [{"name": "input-0", "shape": [-1, 4], "datatype": "FP64"}]


def infer_body(meta: dict[str, Any] | None, rows: int) -> dict[str, Any]:
    """`rows` rows: random numbers for a model that takes one numeric [N, features] tensor;
    else the metadata's example (a DataFrame model's training row, a text model's empty
    document)."""
    inputs: list[dict[str, Any]] = meta["inputs"] if meta else FALLBACK_INPUTS
    shape, datatype = inputs[0]["shape"], inputs[0]["datatype"]
    if len(inputs) == 1 and len(shape) == 2 and datatype in NUMERIC_TYPES:
        features: int = shape[1]
        data = [round(random.uniform(0, 8), 2) for _ in range(rows * features)]
        return {"inputs": [{"name": "input-0", "shape": [rows, features], "datatype": "FP64",
                            "data": data}]}  # fmt: skip
    assert meta is not None  # the fallback is numeric
    return example_request(meta, rows)
