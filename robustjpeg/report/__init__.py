"""Stage 6, reports: run folders read back, Markdown, plots, comparisons and history."""
