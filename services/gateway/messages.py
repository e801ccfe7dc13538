"""The one chat-message validator of the gateway: the REST layer checks ``messages`` with it
before a request leaves the gateway (400 naming the parameter), and every engine checks the
conversation it renders with it (:meth:`~.engines.processing.TokenizerBundle.render_chat`,
INVALID_ARGUMENT), so a conversation one accepts the other accepts too.

Rules (the OpenAI API's): ``role`` is one of :data:`ROLES`; only ``assistant`` messages carry
``tool_calls``, a list of ``{"type": "function", "id": ..., "function": {"name": str,
"arguments": str}}`` objects (``type``, ``id`` and ``arguments`` may be left out; ``arguments``
may also be an object, as some chat templates want); a ``tool`` message answers a call and so
carries its ``tool_call_id``.

Domain code: no gRPC, no HTTP.
"""

from __future__ import annotations

from typing import Any

from swiftmesh.runtime.errors import InvalidArgument

#: Roles a chat message may have.
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _bad(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {problem}", field_violations=[(field, problem)])


def check_tool_calls(tool_calls: Any, field: str) -> None:
    """Validate an assistant message's ``tool_calls``; InvalidArgument naming ``field`` (e.g.
    ``"messages[1].tool_calls"``, or ``"messages[1].tool_calls[0].function.name"``) otherwise."""
    if not isinstance(tool_calls, list):
        raise _bad(field, "must be a list of tool calls")
    for j, call in enumerate(tool_calls):
        at = f"{field}[{j}]"
        if not isinstance(call, dict):
            raise _bad(at, "a tool call must be an object")
        if call.get("type", "function") != "function":
            raise _bad(f"{at}.type", f"only 'function' tool calls are supported, got {call.get('type')!r}")
        if "id" in call and not isinstance(call["id"], str):
            raise _bad(f"{at}.id", "must be a string")
        function = call.get("function")
        if not isinstance(function, dict):
            raise _bad(f"{at}.function", "a tool call needs a 'function' object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{at}.function.name", "a tool call's function needs a name")
        if "arguments" in function and not isinstance(function["arguments"], (str, dict)):
            raise _bad(f"{at}.function.arguments", "must be a JSON string (or an object)")


def check_message(index: int, role: str, *, tool_calls: Any = None, tool_call_id: str | None = None,
                  field: str = "messages") -> None:
    """Validate message ``index`` of a conversation (see the module's rules). ``tool_calls``
    None or empty means none. Raises InvalidArgument whose field violation names the field,
    e.g. ``"messages[2].tool_call_id"``."""
    at = f"{field}[{index}]"
    if role not in ROLES:
        raise _bad(f"{at}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if tool_calls:
        if role != "assistant":
            raise _bad(f"{at}.tool_calls", f"only assistant messages carry tool_calls, not {role!r} ones")
        check_tool_calls(tool_calls, f"{at}.tool_calls")
    if role == "tool" and not tool_call_id:
        raise _bad(f"{at}.tool_call_id", "a tool message needs the tool_call_id of the call it answers")
