"""A gateway with the fake engine in its own process, for memory measurements: `python -m ... PORT MAX_SESSIONS`."""

from __future__ import annotations

import sys

import uvicorn

from gateway.app import create_app
from tests.fakes import FakeEngine
from tests.reliability.conftest import make_settings


def main() -> None:
    port, max_sessions = int(sys.argv[1]), int(sys.argv[2])
    app = create_app(make_settings(max_sessions=max_sessions), engine=FakeEngine())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
