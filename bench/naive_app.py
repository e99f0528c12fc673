"""The baseline: the tutorial way to serve a scikit-learn model with FastAPI.

A pydantic body, a sync endpoint (so a thread-pool hop), `model.predict` per request; for a
model fitted on a DataFrame, rows as objects turned into a DataFrame.
Run: MODEL=path/to/model.joblib uvicorn bench.naive_app:app
"""

import os

import joblib
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ["MODEL"])
app = FastAPI()


class Rows(BaseModel):
    instances: list[list[float]]


@app.post("/predict")
def predict(rows: Rows) -> dict[str, list[float]]:
    return {"predictions": model.predict(rows.instances).tolist()}


class Records(BaseModel):
    instances: list[dict[str, float | str]]


@app.post("/predict-frame")
def predict_frame(rows: Records) -> dict[str, list[str | float]]:
    import pandas as pd  # DataFrame models only: `make bench-image` serves numbers, without it

    return {"predictions": model.predict(pd.DataFrame(rows.instances)).tolist()}
