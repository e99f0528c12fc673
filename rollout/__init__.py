"""The rollout operator: move an mlscale release between model versions, safely."""
