"""Pretraining (distillation) recipes: one folder per method."""
