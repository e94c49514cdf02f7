"""Helpers shared by the tests (tests/) and the benchmarks (bench/): the real service over
HTTPS (`service`), stub engines on real worker sockets (`stub_workers`), generated audio
(`audiogen`), tiny translation models (`translation_models`), and loopback stand-ins for
an object store (`seaweedfs`), an ACME CA (`pebble`) and a model hub (`hub`)."""
