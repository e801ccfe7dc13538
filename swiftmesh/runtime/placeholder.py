"""Servicers whose methods answer UNIMPLEMENTED, for contracts whose service is not built yet.

The generated ``XServicer`` base classes are synchronous; the aio server needs coroutines,
so this builds an async subclass that raises :class:`Unimplemented` from every method.
"""

from __future__ import annotations

import inspect

from swiftmesh.runtime.errors import Unimplemented


def unimplemented(base: type, service_name: str) -> object:
    """An instance of a subclass of the generated servicer ``base`` answering UNIMPLEMENTED."""

    def make(method_name: str):
        async def method(self, request, context):
            raise Unimplemented(f"{service_name}.{method_name} is not implemented by this server")

        return method

    methods = {
        name: make(name)
        for name, fn in inspect.getmembers(base, predicate=inspect.isfunction)
        if not name.startswith("_")
    }
    return type(f"Unimplemented{base.__name__}", (base,), methods)()
