"""Audio I/O with no web framework and no model library: decoding, fetching URLs, pad, mixdown."""
