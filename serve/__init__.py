"""HTTP servers of the project, including the replay LLM backend in `serve.replay`."""
