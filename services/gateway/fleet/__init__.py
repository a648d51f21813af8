"""Model management in Xinference's terms: what can be launched (registrations), what runs (launches on
the engines), and the REST routes and CLI over them."""
