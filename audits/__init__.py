"""The auditor: the store, ingestion, and the audits that read windows of stored data."""
