"""The training data path: Petastorm reader over a features version, batches."""
