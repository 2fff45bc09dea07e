"""Hand-written float32 CPU kernels for the shapes where library GEMMs and torch's small ops fall
short (decode rows, short prefill chunks), and the OpenMP thread-team release the engine uses."""
