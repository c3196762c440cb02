"""The co-creation web app: a FastAPI server with one model worker, and a browser app in ``static/``.

Modules: ``schemas`` (request bodies and their checks), ``plan`` (a checked request ->
the composer's ``ComposeRequest``), ``worker`` (the one thread that owns the model,
its bounded queue and cancellation), ``midi_files`` (MIDI bytes <-> songs),
``app`` (the HTTP API and static files), ``server`` (uvicorn in a thread).
"""
