"""SegTME gRPC server (``segtme serve``). One job per file:

* ``service.py``  — ``build_server`` / ``SegTMEServer`` (health + reflection, auth, TLS, graceful stop).
* ``config.py``   — ``ServerConfig``; ``limits.py`` — server limits, their status codes, job slots.
* ``handlers.py`` — the ``segtme.v1.SegTME`` RPC handlers (GetInfo, ListModels, DetectTME, AnalyzeImage,
  Narrate); a reader thread per stream, idle-stream timeout, draining on shutdown.
* ``requests.py`` — validating what clients send: job config (checked whole on the first message),
  depth-limited JSON, annotations, tile headers and pixels, duplicate / overlapping tiles.
* ``tiles.py``    — one tile at the model's resolution: rescale, pad, post-process, ownership rule.
* ``job.py``      — a job's tiles in flight and their stitching (seam de-duplication, PAGET tissue).
* ``messages.py`` — outgoing NucleiBatch / TMEReport messages; ``report.py`` — the TME report.
* ``runners.py``  — loaded models and their shared batchers; ``batcher.py`` — the micro-batcher.
* ``bind.py``     — listen-address checks before the model loads; ``memory.py`` — heap trimming after jobs.
* ``auth.py``     — bearer-token interceptor and TLS credentials.
* ``fixture_model.py`` — deterministic test model; ``gen_proto.py`` — regenerates ``_proto/``.
"""
