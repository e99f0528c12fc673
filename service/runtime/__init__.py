"""The runtime: loaded versions that predict (`model`), typed frames for models fitted on a
DataFrame (`frames`), adaptive batching (`batching`), and the data plane that loads, warms up,
serves and reports readiness (`dataplane`)."""
