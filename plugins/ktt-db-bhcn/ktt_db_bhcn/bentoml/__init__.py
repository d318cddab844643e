"""BentoML service resources of DB-BHCN and DB-BHCN-AWX (service, bentofile, monitoring config).

The inference service itself is built with the export issue; see README.md here.
"""
