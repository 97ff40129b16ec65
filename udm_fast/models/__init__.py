"""The degradation model: UDM (udm.py), its encoders, generator, discriminator and compressors,
checkpoint formats, the bundled model (pretrained.py) and loading a model from a file (loading.py)."""
