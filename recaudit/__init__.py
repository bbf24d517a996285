"""recaudit audits a recommender in production."""
