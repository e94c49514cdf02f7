"""The model workers' process: one subprocess per engine replica, each serving a Unix socket.

Worker side: `server` (the loop a worker process runs), `engine` (the `Engine` protocol an
engine satisfies), `scheduler` (batching pieces of many jobs; policy only, no engine names),
`devices`, `progress`, and one module per engine (`whisper`, `diarizer`, `translator`,
`audio`), whose heavy libraries are imported inside the engine only.
Shared with the HTTP side: `messages` (every request and result struct), `protocol` (the
framing and the ping/pong/accepted/failure messages), `registry` (which engines run, how many
replicas) and `client` (how the HTTP side calls a worker). The HTTP side imports nothing else
from here; the supervisor that starts the workers is in `app.supervision`.
"""
