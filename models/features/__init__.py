"""Feature definitions shared by the stream, training and evaluation (one definition, no skew)."""
