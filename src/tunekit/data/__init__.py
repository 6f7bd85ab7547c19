"""From a user's data source to batches: loading, row formats, collation."""
