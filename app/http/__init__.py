"""The HTTP side, inside each Granian worker process: the app factory (`main`), the routes
(`routes/`, one module per API area), one middleware class per job (`middleware`), API-key
auth (`auth`), request ids (`request_id`) and Prometheus metrics (`metrics`). It validates,
routes and streams; it imports no model library, and from `app.workers` only `messages`,
`protocol`, `registry` and `client`."""
