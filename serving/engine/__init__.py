"""Engines: `local` (one process, no collectives) and `distributed` (rank processes)."""
