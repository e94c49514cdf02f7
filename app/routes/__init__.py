"""HTTP routes, one module per API area. Handlers validate, call a worker, shape the reply."""
