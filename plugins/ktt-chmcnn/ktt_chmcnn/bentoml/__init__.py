"""BentoML service resources of DB-AC-HMCNN (service, bentofile, monitoring config).

The inference service itself is built with the export issue; see README.md here.
"""
