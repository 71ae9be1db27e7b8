"""Stage 4, attacks: the adapters, the suite files that list them, and their budgets."""
