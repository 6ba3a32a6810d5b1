"""Token shards, the distributed loader, synthetic data and FineWeb scripts.

Modules: ``data.shard`` (file format), ``data.loader`` (TrainLoader, val_batches),
``data.synthetic`` (smoke-test data), and the scripts ``data/cached_fineweb10B.py``
(download) and ``data/fineweb.py`` (tokenize). Nothing is imported here so that the
scripts start without importing torch.
"""
