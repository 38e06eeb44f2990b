"""The foundation every other layer imports: errors, the recipe schema, the run folder and its IO, statistics, integrity checks."""
