"""One `/chat_stream` turn, end to end, run when Starlette sends the response.

Everything that must be released later (the conversation's lock, the
admission place) is taken here, inside the response's own lifecycle, so a
response that is never sent holds nothing.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.chat.schema import ChatStreamBody
from gateway.chat.sse import ChatSSE
from gateway.conversations import Conversation
from gateway.core import CompletionCallback, GenerationRequest, Outcome
from gateway.core.errors import BadChatRequest, GatewayError, SessionStoreUnavailable

if TYPE_CHECKING:
    from gateway.chat.chat_stream import ChatStream

ROUTE = "chat_stream"

logger = logging.getLogger(__name__)


class ChatTurn(Response):
    """The response of one chat turn: an SSE stream, or a JSON refusal with a real status."""

    def __init__(
        self,
        chat: ChatStream,
        request: Request,
        body: ChatStreamBody,
        callback: CompletionCallback | None,
        arrived_at: float,
    ) -> None:
        super().__init__()
        self.chat = chat
        self.request = request
        self.body_in = body
        self.callback = callback
        self.arrived_at = arrived_at

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
        try:  # from here on the lock is held: every way out below releases it
            if body.regenerate:
                prompt.pop_answer()
                if prompt.last_user_text() is None:
                    raise BadChatRequest("there is no answer to regenerate yet", param="regenerate")
            else:
                if prompt.messages and prompt.messages[-1]["role"] == "user":
                    prompt.messages.pop()  # the question of a turn that never ended (its replica died)
                prompt.add_user(body.user_input)
            options = chat.sampling_options(conversation.params, prompt.stop)
            rendered = await chat.render(prompt, core.engine.max_model_len - options.max_tokens)
            if conversation.new:
                # Stored, with its lock, from the start of its first turn: a reload during the
                # first answer finds the session (and shows the question); a second tab gets 409.
                # A stored conversation has nothing to gain from a second write per turn.
                await conversation.save()
        except BaseException as err:
            prompt.restore(snapshot)
            await _abandon(conversation)
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
            arrived_at=self.arrived_at,
        )
        max_history = core.config.max_history_messages
        kept = False

        async def keep(outcome: Outcome) -> None:
            """Save the conversation with what the client received of the answer, once."""
            nonlocal kept
            kept = True  # tried once, never again: the client was told what this write did
            if outcome.parts_sent:
                prompt.add_assistant(outcome.sent_text)
                prompt.forget_oldest(max_history)
            else:  # nothing reached the client: the conversation is as it was
                prompt.restore(snapshot)
            try:
                await conversation.save()
            except SessionStoreUnavailable as err:
                raise SessionStoreUnavailable(
                    f"this answer may not have been saved: {err.message}", retry_after=err.retry_after
                ) from err

        async def on_end(outcome: Outcome) -> None:
            try:
                if not kept:  # the answer did not complete (the client left, the engine failed)
                    await keep(outcome)
            finally:
                await conversation.close()

        # A complete answer is saved before its `done` event: `done` means the next turn continues it.
        await core.run(self.request, send, gen, ChatSSE(request_id), on_end, self.callback, on_complete=keep)


async def _abandon(conversation: Conversation) -> None:
    """Leave the conversation as it was before a turn that will not run, and release its lock.

    The save writes only what differs from the store (nothing, unless this turn created the
    conversation: then it is dropped again). A store failure here is logged: the answer is the refusal.
    """
    try:
        try:
            await conversation.save()
        finally:
            await conversation.close()
    except Exception as exc:
        logger.warning("could not leave the conversation of a refused turn: %s", type(exc).__name__)
