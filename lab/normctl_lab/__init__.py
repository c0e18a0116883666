"""The experiment harness: models, data and training loops built on the library."""
