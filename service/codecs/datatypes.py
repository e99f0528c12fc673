"""The Open Inference Protocol's tensor datatypes."""

INTEGER_TYPES = {f"{p}{b}" for p in ("INT", "UINT") for b in (8, 16, 32, 64)}
FLOAT_TYPES = {"FP16", "FP32", "FP64"}
NUMERIC_TYPES = INTEGER_TYPES | FLOAT_TYPES  # the ones that can carry numbers
DATATYPES = NUMERIC_TYPES | {"BOOL", "BYTES"}
