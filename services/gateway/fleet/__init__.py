"""The engines behind the gateway: which answer and what they serve (engines), which one a request goes
to (router), and model management in Xinference's terms (registrations, catalog, manager, the CLI).
No HTTP here: the routes are in openai_api/ and xinference_api/."""
