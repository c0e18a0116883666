"""The experiment lab: models, offline corpora, resumable runs, sweeps and the papers'
reproductions, built on the normctl library."""

import normctl  # noqa: F401  (first: it imports torch without the NumPy warning)
