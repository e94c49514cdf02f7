"""HTTP routes, one module per API area. Handlers validate, call a worker, shape the reply."""

JSON_BODY_LIMIT_BYTES = 1024 * 1024  # every JSON body; uploads have REFLECTOR_GPU_MAX_UPLOAD_BYTES
