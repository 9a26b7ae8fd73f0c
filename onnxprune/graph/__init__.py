"""The graph stage: an index of the model, channel layouts, op rules and the prunable groups (analyze)."""
