"""OpenAI's Responses API (`POST /v1/responses`), served on the chat path; responses are not stored."""
