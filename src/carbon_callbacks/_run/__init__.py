"""A training run: the session every adapter drives, the accountant that keeps its totals, and its files."""
