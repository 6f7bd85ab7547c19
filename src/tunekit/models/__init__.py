"""Loading base models and tokenizers, and inspecting their structure."""
