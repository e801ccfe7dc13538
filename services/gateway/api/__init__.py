"""The OpenAI-compatible REST layer of the gateway: protocol models, handlers, app."""
