"""Shaping transcripts: speakers for words and segments, and the OpenAI response formats.

Pure functions on the Whisper worker's `Transcript` and the diarizer's `Turn`s; nothing
here imports the web framework or a model library.
"""
