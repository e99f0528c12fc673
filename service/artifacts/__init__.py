"""Artifacts: a fitted estimator becomes a verified, immutable version in the store, and ships
as a model image. `manifest` describes a version (pydantic only: the operator reads it too),
`store` writes and verifies versions, `signature` infers what a model takes and gives,
`publish` and `train` write versions, `package` builds model images with `engine`."""
