"""Getting pixels in: decoding, input expansion, preprocessing and batching."""
