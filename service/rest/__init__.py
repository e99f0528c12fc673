"""HTTP: the route table (`routes`), its handlers (`endpoints`), the one way out (`answer`),
the ASGI fast path every request takes (`fastpath`), the FastAPI app for the docs (`app`,
`openapi`), uvicorn with its transport (`server`, `transport`), draining on SIGTERM
(`shutdown`) and the log of rejected requests (`rejections`)."""
