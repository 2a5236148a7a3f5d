"""What every driver needs: the target server and model, and a shared tool and output schema."""

from __future__ import annotations

import os

BASE_URL = os.environ["OPENAI_BASE_URL"]
MODEL = os.environ["CHATSTREAM_CLIENTS_MODEL"]
API_KEY = "EMPTY"
# Bounds on each request: a request that hangs fails the case instead of the whole run.
TIMEOUT = 120.0
# Constrained decoding on a random-weight model can pad JSON with whitespace for a while;
# within the 1024-token context this leaves room for it to close the object.
JSON_MAX_TOKENS = 600
