"""The foundation every other layer imports: errors, the recipe schema, model references, the run folder and its IO, statistics, integrity checks."""
