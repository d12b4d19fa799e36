"""Artificial crystal structures -> seed-indexed shards (Acta Cryst. A 2026, section 3)."""
