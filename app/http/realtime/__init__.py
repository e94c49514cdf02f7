"""Realtime transcription: OpenAI's Realtime API transcription session over a WebSocket.

`events` reads client events and writes server events (the shapes the OpenAI Python SDK
sends and parses), `turns` holds the pure logic (server VAD over speech probabilities,
the stable prefix of partial decodes), `session` runs one session against the Whisper
worker, and `slots` bounds how many sessions are open at once across HTTP workers. The
route itself is `app.http.routes.realtime`. Nothing here imports a model library: speech
probabilities and transcripts come from the Whisper worker.
"""
