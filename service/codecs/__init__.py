"""Request and response bodies: the Open Inference Protocol's V2 and KServe's v1 (`protocol`),
their datatypes (`datatypes`), tabular input by column (`columns`) and the binary tensor
extension (`binary`)."""
