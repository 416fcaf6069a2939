"""One router per route group."""
