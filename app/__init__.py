"""Reflector GPU host: a self-hosted speech service that Reflector calls over HTTPS."""
