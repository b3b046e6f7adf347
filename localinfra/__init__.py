"""Local Apache Kafka and PostgreSQL servers for hosts without a Docker engine."""
