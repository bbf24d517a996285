"""Publication of audit results: HTML pages for reviewers and alerts for whoever is on call."""
