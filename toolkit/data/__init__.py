"""Problems and their answers: suites and loading, answer extraction, strategies, voting, hygiene (dedup, leakage), question writing, the calculator."""
