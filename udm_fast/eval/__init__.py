"""Evaluation: image-quality metrics (metrics.py) and the transfer table with its degradation measures (transfer.py)."""
