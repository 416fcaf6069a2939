"""The HTTP server: app factory, settings, routes, the engine thread."""
