"""Static files of the worker: the live page (``index.html``, ``app.js``) and the query API's
JSON Schema (``user_lookup.schema.json``, linked from schemas/), served by :mod:`stream.api`."""
