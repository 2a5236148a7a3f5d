"""The Conversations API: `/v1/conversations` and its items, stored as `ResponseStore` records.

A conversation is created (with up to 20 items and metadata), read, given new
metadata, deleted; its items are listed, added, read and deleted one by one.
A response created with `conversation` appends its input and its output to
it (responses.py). Every record belongs to its creator's key; another key
gets the 404 an unknown id gets.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse, Response

from gateway.core.errors import GatewayError, NotFound
from gateway.http.limits import read_body
from gateway.openai.bodies import parse
from gateway.openai.response_items import input_items, item_list, new_id
from gateway.openai.response_store import ResponseStore
from gateway.openai.responses import owner_of
from gateway.openai.responses_request import check_metadata
from gateway.openai.routes import OpenAIRoutes, mount

ROUTE = "v1/conversations"


class _WithMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)


class _CreateConversation(_WithMetadata):
    items: list[Any] | None = Field(None, max_length=20)


class _UpdateConversation(_WithMetadata):
    metadata: dict[str, str] | None


class _AddItems(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[Any] = Field(min_length=1, max_length=20)


class ConversationRoutes:
    """Each route: read the body, act on the owner's record, answer in OpenAI's shapes."""

    def __init__(self, routes: OpenAIRoutes, store: ResponseStore) -> None:
        self.routes = routes
        self.store = store

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.routes.core.config.max_body_bytes)

    async def create(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            asked = parse(_CreateConversation, body or b"{}")
            items = input_items(asked.items or [], "items")
            head = await self.store.create_conversation(new_id("conv"), owner_of(request), asked.metadata, items)
        except GatewayError as err:
            return self.routes.refuse(ROUTE, err)
        return JSONResponse(head)

    async def get(self, request: Request, conversation_id: str) -> Response:
        try:
            record = await self.store.conversation(conversation_id, owner_of(request))
        except GatewayError as err:
            return self.routes.refuse(ROUTE, err)
        return JSONResponse(record["conversation"])

    async def update(self, request: Request, conversation_id: str) -> Response:
        try:
            asked = parse(_UpdateConversation, await self._body(request))
            head = await self.store.set_metadata(conversation_id, owner_of(request), asked.metadata)
        except GatewayError as err:
            return self.routes.refuse(ROUTE, err)
        return JSONResponse(head)

    async def delete(self, request: Request, conversation_id: str) -> Response:
        try:
            await self.store.delete_conversation(conversation_id, owner_of(request))
        except GatewayError as err:
            return self.routes.refuse(ROUTE, err)
        return JSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})

    async def list_items(self, request: Request, conversation_id: str) -> Response:
        try:
            record = await self.store.conversation(conversation_id, owner_of(request))
            page = item_list(record["items"], request.query_params)
        except GatewayError as err:
            return self.routes.refuse(ROUTE, err)
        return JSONResponse(page)

    async def add_items(self, request: Request, conversation_id: str) -> Response:
        try:
            asked = parse(_AddItems, await self._body(request))
            items = input_items(asked.items, "items")
            await self.store.append(conversation_id, owner_of(request), items)
        except GatewayError as err:
            return self.routes.refuse(ROUTE, err)
        return JSONResponse(item_list(items, {"order": "asc", "limit": "100"}))

    async def get_item(self, request: Request, conversation_id: str, item_id: str) -> Response:
        try:
            record = await self.store.conversation(conversation_id, owner_of(request))
            item = _find(record["items"], item_id)
        except GatewayError as err:
            return self.routes.refuse(ROUTE, err)
        return JSONResponse(item)

    async def delete_item(self, request: Request, conversation_id: str, item_id: str) -> Response:
        try:
            head = await self.store.delete_item(conversation_id, owner_of(request), item_id)
        except GatewayError as err:
            return self.routes.refuse(ROUTE, err)
        return JSONResponse(head)


def _find(items: list[dict[str, Any]], item_id: str) -> dict[str, Any]:
    for item in items:
        if item.get("id") == item_id:
            return item
    raise NotFound(f"No item found with id {item_id[:80]!r}.")


def add_conversation_routes(app: FastAPI, routes: OpenAIRoutes, store: ResponseStore) -> ConversationRoutes:
    """Mount `/v1/conversations` and its item routes on `app`."""
    conversations = ConversationRoutes(routes, store)
    path, item_path = "/v1/conversations/{conversation_id}", "/v1/conversations/{conversation_id}/items"

    mount(
        app,
        [
            ("POST", "/v1/conversations", conversations.create),
            ("GET", path, conversations.get),
            ("POST", path, conversations.update),
            ("DELETE", path, conversations.delete),
            ("GET", item_path, conversations.list_items),
            ("POST", item_path, conversations.add_items),
            ("GET", item_path + "/{item_id}", conversations.get_item),
            ("DELETE", item_path + "/{item_id}", conversations.delete_item),
        ],
    )
    return conversations
