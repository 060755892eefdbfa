"""OpenAI's native Batch API: batch files, their durable state, submission and polling."""
