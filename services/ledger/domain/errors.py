"""Why a command is refused. Each maps to one problem type at the edges."""

from __future__ import annotations


class LedgerError(Exception):
    code = "ledger_error"
