"""BentoML resources of DB-BHCN and DB-BHCN+AWX: `service.py` defines the services (see README.md)."""
