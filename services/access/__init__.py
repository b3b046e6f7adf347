"""Who may call the APIs: API keys with scopes, stored as hashes."""
