"""Hand-written kernels for the shapes where library GEMMs fall short (decode-sized batches)."""
