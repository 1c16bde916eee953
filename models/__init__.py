"""Inference wrappers (blocking; called from worker threads). Arrive with the voice pipeline."""
