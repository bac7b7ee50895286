"""SegTME gRPC server (``segtme serve``).

* ``service.py``  — the ``segtme.v1.SegTME`` servicer (GetInfo, ListModels, DetectTME, AnalyzeImage,
  Narrate) and ``build_server`` / ``ServerConfig`` (health + reflection, auth, TLS, limits).
* ``batcher.py``  — one micro-batching worker thread per model shared by all streams.
* ``tiles.py``    — decoding and validating one streamed tile, per-tile post-processing and the
  ownership rule (core half-open + annotation geometry).
* ``limits.py``   — server limits and their status codes.
* ``auth.py``     — bearer-token interceptor and TLS credentials.
* ``gen_proto.py``— regenerates ``_proto/`` (the committed stubs) from ``proto/segtme/v1/segtme.proto``.
"""
