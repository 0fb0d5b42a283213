"""Models: the T5 encoder-decoder, soft prompts, and the training/decoding wrapper."""
