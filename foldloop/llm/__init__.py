"""Models: the LLM protocol, Reply/ToolCall, and ScriptedLLM (adapters come as extras)."""

from foldloop.llm._anthropic_chat import AnthropicChat
from foldloop.llm._openai_chat import OpenAIChat
from foldloop.llm._protocol import LLM, Reply, ToolCall
from foldloop.llm._scripted import ScriptedLLM, ScriptFn, estimate_tokens

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
