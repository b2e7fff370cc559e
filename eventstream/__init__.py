"""EventStreamCore: a Raft-replicated event-ingestion node with a native hot path."""

__version__ = "0.1.0"
