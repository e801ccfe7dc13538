"""aligner service."""
