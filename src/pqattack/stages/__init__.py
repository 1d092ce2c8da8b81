"""The pipeline's stages, each a function of typed arguments that builds (or loads from the cache) one kind of
artifact: backbone checkpoints, features, codebooks and index (the target), adversarial query sets. ``keys``
holds every artifact's spec."""
