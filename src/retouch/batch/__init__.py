"""Batch editing: `retouch batch MANIFEST --out DIR`, on a local process pool or a Ray cluster."""
