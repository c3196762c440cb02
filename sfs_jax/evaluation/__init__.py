"""Evaluation: objective metrics of generated songs (see ``metrics``)."""
