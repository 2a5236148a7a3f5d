from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    client, case, params, out = argv
    module = importlib.import_module(f"tests.clients.drivers.{client}_cases")
    result = module.CASES[case](**json.loads(params))
    Path(out).write_text(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1:])
