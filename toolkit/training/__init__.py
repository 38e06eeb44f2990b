"""Student training: the training loop, data-parallel helpers and the training job a launcher runs."""
