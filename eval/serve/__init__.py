"""``parsetune serve``: the fine-tuned parser behind an OpenAI-compatible HTTP API, and a page to try it.

- ``served_model``: what a MODEL_OR_RUN_DIR serves: the checkpoint, tokenizer, the task's prompt
  format and constraints (a run dir knows its task from its config and prepared data).
- ``batcher``: one decode thread; concurrent requests share decode steps (dynamic batching with a
  short wait window), a bounded queue, per-request cancellation.
- ``protocol``: the request bodies (OpenAI's completions / chat completions + our extra fields),
  checked into typed settings or a 4xx.
- ``api``: the FastAPI app (routes, errors in OpenAI's shape, the page at ``/``).
- ``guard``: what every request passes first (Host allow-list, API key, body size on the bytes read);
  ``access``: where the key comes from and which Host names are accepted.
- ``read_deadline``: uvicorn's connection with a deadline on reading each request.
- ``schema_check``: refuses JSON Schemas whose ``$ref`` s loop without end.
- ``cli``: the ``parsetune serve`` command (uvicorn).
"""
