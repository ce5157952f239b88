"""The serving core: loaded models, the registry of versions, the data plane."""
