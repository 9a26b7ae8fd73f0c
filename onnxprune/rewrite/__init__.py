"""The rewrite stage: graph surgery that removes channels and writes the consumers' new weights."""
