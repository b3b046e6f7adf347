"""The loyalty ledger's services: the write side (ledger) and the read side (projector)."""
