"""The configs (Hydra finds them as ``pkg://pqattack.conf``; a package so that installed wheels ship them)."""
