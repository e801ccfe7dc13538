"""The one chat-message validator: the REST layer and the engines accept and refuse the same
conversations (assistant ``tool_calls``, ``tool`` messages)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from swiftmesh.runtime.errors import InvalidArgument
from swiftmesh.services.gateway.api.errors import from_validation_error
from swiftmesh.services.gateway.api.protocol import ChatCompletionRequest
from swiftmesh.services.gateway.engines.processing import TokenizerBundle
from swiftmesh.services.gateway.engines.types import ChatMessage, ChatPrompt
from swiftmesh.services.gateway.messages import check_message

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
GOOD = [
    [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
     {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}],
    [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}],
]
BAD = [
    ([{"role": "user", "content": "x", "tool_calls": [CALL]}], "messages[0].tool_calls"),
    ([{"role": "tool", "content": "sunny"}], "messages[0].tool_call_id"),
    ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]}],
     "messages[0].tool_calls[0].function.name"),
    ([{"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f"}}]}],
     "messages[0].tool_calls[0].type"),
    ([{"role": "assistant", "tool_calls": ["f"]}], "messages[0].tool_calls[0]"),
]


class _Tokenizer:
    chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"

    def apply_chat_template(self, messages, **kw):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def _engine_render(messages: list[dict]) -> str:
    bundle = TokenizerBundle(_Tokenizer(), [0], 10, 100)
    chat = ChatPrompt(messages=[ChatMessage(role=m["role"], content=m.get("content") or "",
                                            tool_call_id=m.get("tool_call_id") or "",
                                            tool_calls=m.get("tool_calls")) for m in messages])
    return bundle.render_chat(chat, "m")


@pytest.mark.parametrize("messages", GOOD)
def test_both_layers_accept(messages):
    ChatCompletionRequest(model="m", messages=messages)
    assert _engine_render(messages)


@pytest.mark.parametrize(("messages", "field"), BAD)
def test_both_layers_refuse_naming_the_field(messages, field):
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest(model="m", messages=messages)
    from fastapi.exceptions import RequestValidationError

    err = from_validation_error(RequestValidationError(e.value.errors()))
    assert err.status == 400 and err.param == field
    with pytest.raises(InvalidArgument) as e2:
        _engine_render(messages)
    assert e2.value.field_violations[0].field == field


def test_unknown_role():
    with pytest.raises(InvalidArgument) as e:
        check_message(3, "robot")
    assert e.value.field_violations[0].field == "messages[3].role"
