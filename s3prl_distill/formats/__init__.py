"""Importers and exporters of foreign checkpoint formats, kept apart from the model code."""
