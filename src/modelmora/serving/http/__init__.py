"""The HTTP front end: FastAPI app, routes (OpenAI-compatible and native), bodies, errors."""
