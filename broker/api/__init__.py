"""The public API: its endpoints, the admission of each request (key, limits, model), and the
error responses every client family expects."""
