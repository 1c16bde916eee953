"""HTTP blueprints: they parse, authorise, hand to ``app`` and format the reply."""
