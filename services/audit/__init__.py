"""Auditor tools: they read the log as stored and trust nothing derived from it."""
