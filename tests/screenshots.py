"""Writes the README's screenshots of the chat page: `python -m tests.screenshots [DIR]`.

The answer is scripted (the fake engine) so the pictures show what the page
renders, not the random text of the tiny test model; everything else is the
real gateway in the real Chromium the tests use.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway import Settings, create_app
from tests.browser import DESKTOP, PHONE, launch_chromium
from tests.fakes import FakeEngine
from tests.live import serve

QUESTION = "How do I read the stream from Python?"
ANSWER = """Use **httpx** and read the response line by line; each `delta` event carries the next piece of text:

```python
with httpx.stream("POST", url, json={"user_input": "Hi"}) as r:
    for line in r.iter_lines():
        print(line)
```

A few things to keep in mind:

- the session cookie keeps the conversation, so reuse one client;
- a `429` means the queue is full: wait for *Retry-After* seconds;
- the `done` event reports the token counts.
"""


async def capture(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    app = create_app(Settings(secure_cookies=False, max_new_tokens=1024), engine=FakeEngine(answer=ANSWER))
    async with serve(app) as url, launch_chromium() as browser:
        for name, viewport, scale, with_settings in (("desktop", DESKTOP, 1, True), ("phone", PHONE, 2, False)):
            context = await browser.new_context(viewport=viewport, device_scale_factor=scale)
            page = await context.new_page()
            await page.goto(url)
            await page.wait_for_selector("#conversation[data-loaded]")  # the page sends once it has drawn it
            await page.fill("#input", QUESTION)
            await page.press("#input", "Enter")
            await page.wait_for_selector("article.msg.assistant[data-state='done']", timeout=60_000)
            await page.wait_for_selector("#load[data-level]")
            if with_settings:
                await page.click("#settings-toggle")
            await page.fill("#input", "Thanks! And how do I stop an answer?")
            await page.evaluate("document.activeElement.blur()")
            path = out / f"{name}.png"
            await page.screenshot(path=str(path))
            written.append(path)
            await context.close()
    return written


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/screenshots")
    for path in asyncio.run(capture(out)):
        print(path)


if __name__ == "__main__":
    main()
