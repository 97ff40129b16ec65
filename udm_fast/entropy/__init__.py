"""Entropy coding of the degradation codes: the EntropyBottleneck (bottleneck.py), the rANS coders
(coder.py) and the .udm code format (degradation_code.py)."""
