"""A model nobody wrote for mlscale: the kind of training script a user already has.

iris as a pandas DataFrame, with sepal length turned into a string column (small, medium,
large), one-hot encoded beside scaled numbers, and a gradient-boosted classifier whose class
labels are strings. `python examples/flowers.py OUT [--seed N]` trains it and writes what
`mlscale publish` takes: OUT/flowers.joblib, OUT/sample.csv (a few training rows, for the
column types) and OUT/holdout.csv (held-out rows with their `species`, for offline metrics).
Different seeds give different versions.
"""

import argparse
from pathlib import Path

import joblib
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.datasets import load_iris
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

TARGET = "species"


def load() -> tuple[pd.DataFrame, pd.Series]:
    data = load_iris(as_frame=True)
    x = data.data.rename(columns=lambda c: c.removesuffix(" (cm)").replace(" ", "_"))
    size = pd.cut(x.pop("sepal_length"), 3, labels=["small", "medium", "large"])
    x["sepal_size"] = size.astype(str)
    return x, data.target.map(dict(enumerate(data.target_names))).rename(TARGET)


def train(seed: int = 0) -> tuple[Pipeline, pd.DataFrame, pd.DataFrame, pd.Series]:
    """The fitted pipeline, its training rows, and the held-out rows with their labels."""
    x, y = load()
    x_train, x_test, y_train, y_test = train_test_split(x, y, random_state=seed, stratify=y)
    encode = make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), ["sepal_size"]), remainder=StandardScaler()
    )
    pipe = make_pipeline(encode, GradientBoostingClassifier(n_estimators=25, random_state=seed))
    return pipe.fit(x_train, y_train), x_train, x_test, y_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the model and its CSV files")
    parser.add_argument("--seed", type=int, default=0, help="training seed (a new version)")
    args = parser.parse_args()
    pipe, x_train, x_test, y_test = train(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipe, args.out / "flowers.joblib")
    x_train.head(20).to_csv(args.out / "sample.csv", index=False)
    x_test.assign(**{TARGET: y_test}).to_csv(args.out / "holdout.csv", index=False)
    print(f"wrote {args.out}/flowers.joblib, sample.csv, holdout.csv")


if __name__ == "__main__":
    main()
