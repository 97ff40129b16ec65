"""Synthetic degradations: the degradation pipeline (degrade.py) and libjpeg-exact JPEG as tensor ops (jpeg.py)."""
