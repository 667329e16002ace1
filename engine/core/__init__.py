"""The values every layer shares: Recipe, Result, errors, units and the facts about this machine."""
