"""The book's presentation: result tables and figures, the teaching walk-through, the method figure, provenance."""
