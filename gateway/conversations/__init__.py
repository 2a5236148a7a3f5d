"""Conversations: one model (a ChatPrompt underneath) and where it lives: the HTTP session or a database."""

from gateway.conversations.model import Conversation, ConversationHandler
from gateway.conversations.persistent import ConversationIdHeader, PersistentConversations
from gateway.conversations.session import SessionConversations

__all__ = [
    "Conversation",
    "ConversationHandler",
    "ConversationIdHeader",
    "PersistentConversations",
    "SessionConversations",
]
