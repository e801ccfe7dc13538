"""hub service."""
