"""The HTTP faces over the engine: the native ``/v1`` API (ML Server face to come)."""
