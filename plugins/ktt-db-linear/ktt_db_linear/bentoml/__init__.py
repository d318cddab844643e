"""BentoML resources of DB-Linear: `service.py` defines the services (see README.md)."""
