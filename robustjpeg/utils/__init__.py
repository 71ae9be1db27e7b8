"""Small utilities every stage uses: files, registries, formatting, statistics, locks, processes."""
