"""The system under audit: the streaming service's formats, its simulator and a reference recommender.

Nothing here knows about the auditor; it works on files and DataFrames only.
"""
