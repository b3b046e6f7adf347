"""The message contract shared by the write side and the read side."""
