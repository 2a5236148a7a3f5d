"""One `/chat_stream` turn, end to end, run when Starlette sends the response.

Everything that must be released later (the conversation's lock, the
admission place) is taken here, inside the response's own lifecycle, so a
response that is never sent holds nothing.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.chat.schema import ChatStreamBody
from gateway.chat.sse import ChatSSE
from gateway.core import CompletionCallback, GenerationRequest, Outcome
from gateway.core.errors import BadChatRequest, GatewayError
from prompts import TurnTooLong

if TYPE_CHECKING:
    from gateway.chat.chat_stream import ChatStream

ROUTE = "chat_stream"


class ChatTurn(Response):
    """The response of one chat turn: an SSE stream, or a JSON refusal with a real status."""

    def __init__(
        self, chat: ChatStream, request: Request, body: ChatStreamBody, callback: CompletionCallback | None
    ) -> None:
        super().__init__()
        self.chat = chat
        self.request = request
        self.body_in = body
        self.callback = callback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chat, body, core = self.chat, self.body_in, self.chat.core
        request_id = uuid.uuid4().hex
        try:
            conversation = await chat.open_conversation(self.request, lock=True)
        except GatewayError as err:
            await chat.refuse(err)(scope, receive, send)
            return
        prompt = conversation.prompt
        snapshot = prompt.snapshot()
        try:
            if body.regenerate:
                prompt.pop_answer()
                if prompt.last_user_text() is None:
                    raise BadChatRequest("there is no answer to regenerate yet", param="regenerate")
            else:
                prompt.add_user(body.user_input)
            options = chat.sampling_options(conversation.params, prompt.stop)
            try:
                rendered = prompt.render(core.engine.max_model_len - options.max_tokens)
            except TurnTooLong as err:
                raise BadChatRequest(f"{err}; shorten the message", param="user_input") from None
        except BaseException as err:
            prompt.restore(snapshot)
            await conversation.close()
            if not isinstance(err, GatewayError):
                raise
            await chat.refuse(err)(scope, receive, send)
            return

        gen = GenerationRequest(
            request_id=request_id,
            route=ROUTE,
            prompt_token_ids=rendered.token_ids,
            options=options,
            headers=((b"x-message-id", request_id.encode()),),
        )
        max_history = core.config.max_history_messages

        async def on_end(outcome: Outcome) -> None:
            try:
                if outcome.parts_sent:
                    prompt.add_assistant(outcome.sent_text)
                    prompt.forget_oldest(max_history)
                else:  # nothing reached the client: the conversation is as it was
                    prompt.restore(snapshot)
                await conversation.save()
            finally:
                await conversation.close()

        await core.run(self.request, send, gen, ChatSSE(request_id), on_end, self.callback)
