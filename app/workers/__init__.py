"""Model workers: one subprocess per engine, each serving a Unix socket.

`protocol` holds the framing and the messages every worker understands, `server` the loop a
worker process runs, `client` what the HTTP side calls, `supervisor` what the entrypoint
runs, `registry` the list of engines. One module per engine (`whisper`, ...) holds that
engine's messages and its `Engine` class; heavy libraries are imported inside the engine's
methods only, so the HTTP side can import the messages without torch.
"""
