"""Runs the stages: the session over one model, the per-group runner, verify, report, sweep and eval."""
