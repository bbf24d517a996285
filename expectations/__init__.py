"""Great Expectations suites, one JSON file per dataset: the data contracts of the service.

They ship inside the package so that an installed recaudit finds them without a checkout.
"""
