"""Read side: the projector that builds read models in Postgres, and the read API."""
