"""The paper's formulas: ex-ante estimates (hours x chips x power x PUE x intensity) and Table 4 recomputed."""
