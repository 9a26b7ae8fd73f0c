"""The budget stage: how many channels each group keeps (allocation, parameter/FLOP cost, error curves)."""
