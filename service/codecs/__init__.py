"""Request and response bodies: the Open Inference Protocol's V2 and KServe's v1 (`protocol`),
tabular input by column (`columns`) and the binary tensor extension (`binary`). The datatypes
are the protocol's, in `contract.py`."""
