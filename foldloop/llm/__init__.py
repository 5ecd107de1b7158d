"""Models: the LLM protocol and its async form, Reply/ToolCall, ScriptedLLM and the adapters."""

from foldloop.llm._anthropic_chat import AnthropicChat
from foldloop.llm._openai_chat import OpenAIChat
from foldloop.llm._protocol import LLM, AsyncComplete, Reply, ToolCall, async_form
from foldloop.llm._scripted import ScriptedLLM, ScriptFn, estimate_tokens

__all__ = [
    "LLM",
    "AnthropicChat",
    "AsyncComplete",
    "OpenAIChat",
    "Reply",
    "ScriptFn",
    "ScriptedLLM",
    "ToolCall",
    "async_form",
    "estimate_tokens",
]
