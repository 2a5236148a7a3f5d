"""Client programs run in the clients' own environment (`.venv-clients`), one case per process.

`python -m tests.clients.drivers CLIENT CASE PARAMS_JSON OUT_PATH` calls one case of
`drivers/CLIENT.py` against the server in `OPENAI_BASE_URL` (model `CHATSTREAM_CLIENTS_MODEL`)
and writes what the client received, as JSON, to OUT_PATH. The tests assert on it.
Only the client libraries and the standard library are imported here: not the gateway.
"""
