"""Building plans: synthesize, lower and verify; candidates; plan libraries."""
