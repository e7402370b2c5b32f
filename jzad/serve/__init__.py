"""An inspection service: images scored over HTTP as a line produces them, with a live page.

    python -m jzad.serve --method patchcore --demo                       # built-in demo (random weights)
    python -m jzad.serve --method patchcore --references good/ --backbone efficientnet-lite0 --threshold 12.5
    curl -s -F image=@part.png http://127.0.0.1:8000/score

Built on the streaming arithmetic of ``jzad.stream`` (few-shot methods fitted once on the references, MuSc and
FSLC against their bounded bank, zero-shot WinCLIP), behind Starlette served by uvicorn: ``engine`` (decode,
score, overlays, checkpoints; synchronous), ``batcher`` (dynamic batching over a bounded queue), ``app`` (the
endpoints, metrics, live page), ``cli`` (options, start-up, SIGTERM).
"""
