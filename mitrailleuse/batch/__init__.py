"""Native batches (OpenAI, Anthropic, Gemini): batch files, durable state, submission, polling."""
