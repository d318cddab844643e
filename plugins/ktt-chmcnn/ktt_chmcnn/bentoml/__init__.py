"""BentoML resources of DB-AC-HMCNN: `service.py` defines the services (see README.md)."""
