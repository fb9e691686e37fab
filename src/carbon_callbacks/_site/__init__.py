"""Where the electricity comes from and how efficient the building is: the bundled tables and the resolved site."""
