"""Models: the LLM protocol, Reply/ToolCall, and ScriptedLLM (adapters come as extras)."""

from foldloop.llm.anthropic_chat import AnthropicChat
from foldloop.llm.openai_chat import OpenAIChat
from foldloop.llm.protocol import LLM, Reply, ToolCall
from foldloop.llm.scripted import ScriptedLLM, ScriptFn, estimate_tokens

__all__ = [
    "AnthropicChat",
    "OpenAIChat",
    "LLM",
    "Reply",
    "ScriptFn",
    "ScriptedLLM",
    "ToolCall",
    "estimate_tokens",
]
