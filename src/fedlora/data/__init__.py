"""Credit-risk data: built-in datasets, schemas, row-to-text serialization, splits, partitions."""
