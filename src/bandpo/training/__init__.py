"""Task, data and model plumbing for ``bandpo train`` and ``bandpo compare`` (needs the ``trl`` extra)."""
