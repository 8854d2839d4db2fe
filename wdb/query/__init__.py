"""The questions: nearest neighbours and novelty, indexes, error-set similarity, alignment,
weight-space symmetries and the engines that run them in process or on Dask."""
